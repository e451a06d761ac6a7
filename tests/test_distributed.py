"""One run on several processes (torchrun, gloo on the CPU) equals one process.

Each torchrun start costs seconds on 2 cores (two ranks import torch and timm), so one launch checks
several things. Models: timm's test_vit (LayerNorm: no batch statistics, so sharding a batch
changes no number) and test_resnet with its whole backbone frozen (BatchNorm in eval mode).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

# 165 training images (batch 16: a last batch of 5, cut 3 + 2) and 35 to validate (odd)
DATA = "synthetic:5x40@32"


def _config(out: Path, backbone: str = "test_vit", **overrides: Any) -> Any:
    from tlbench.train.api import run_config

    values = {"freeze": "none", "data": DATA, "image_size": 32, "pretrained": False, "device": "cpu",
              "epochs": 3, "lr": 0.02, "augment": "none", "dropout": 0.0, "batch_size": 16}  # fmt: skip
    return run_config(backbone, out=out, **(values | overrides))


def _torchrun(cell: Path, *, nproc: int = 2) -> subprocess.Popen[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "tlbench.train.worker",
        str(cell),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cell(path: Path, cfg: Any, resume: bool = False) -> Path:
    path.write_text(json.dumps({"kind": "run", "config": cfg.to_dict(), "resume": resume}))
    return path


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "metrics.csv").open() as fh:
        keys = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr")
        return [{k: float(row[k]) for k in keys} for row in csv.DictReader(fh)]


def _same(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for key, value in ra.items():
            assert rb[key] == pytest.approx(value, rel=2e-4, abs=1e-5), key


def test_two_ranks_equal_one_process_and_a_stopped_run_resumes(tmp_path: Path) -> None:
    from tlbench.rundir import RunDir
    from tlbench.train.api import train

    one = train(_config(tmp_path / "one", epochs=4), progress=False)

    two = tmp_path / "two"
    proc = _torchrun(_cell(tmp_path / "two.json", _config(two, epochs=4)))
    try:
        deadline = time.monotonic() + 180
        while not (two / "metrics.csv").is_file():  # the first epoch is done
            assert proc.poll() is None and time.monotonic() < deadline, "the DDP run ended early"
            time.sleep(0.05)
        rank0 = RunDir(two).holder()
        assert rank0  # rank 0 holds the run directory
        os.kill(rank0, signal.SIGTERM)  # one rank's signal stops every rank at the next batch
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "tlbench: error: stopped" in out
    assert RunDir(two).has_checkpoint and not RunDir(two).finished

    resumed = _torchrun(_cell(tmp_path / "resume.json", _config(two, epochs=4), resume=True))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    _same(_metrics(one), _metrics(two))

    run = RunDir(two)
    summary, config = run.read_summary(), run.read_config()
    assert summary.world_size == 2 and summary.val_images == 35  # every validation image once, none padded
    assert config.resolved.distributed == {"world_size": 2, "backend": "gloo", "per_rank_batch": 8}
    from tlbench import speed  # the node's cores are shared by its ranks, not each given them all

    chosen = config.resolved.speed
    if chosen["why"]["threads"] == "OMP_NUM_THREADS":  # set by the suite (conftest) or by torchrun itself
        assert chosen["threads"] == int(os.environ.get("OMP_NUM_THREADS", "1"))
    else:
        assert chosen["threads"] == max(1, speed.available_cores() // 2)
    assert summary.final_val_loss == pytest.approx(RunDir(one).read_summary().final_val_loss, rel=2e-4)
    preds = run.read_predictions()
    assert [p.index for p in preds] == list(range(35))
    assert [p.predicted for p in preds] == [p.predicted for p in RunDir(one).read_predictions()]


def test_linear_probe_on_a_batchnorm_backbone_and_a_batch_that_does_not_divide(tmp_path: Path) -> None:
    from tlbench.rundir import RunDir
    from tlbench.train.api import train

    cfg = {"freeze": "all", "epochs": 2, "lr": 0.05}
    one = train(_config(tmp_path / "one", "test_resnet", **cfg), progress=False)
    proc = _torchrun(_cell(tmp_path / "two.json", _config(tmp_path / "two", "test_resnet", **cfg)))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    _same(_metrics(one), _metrics(tmp_path / "two"))
    assert RunDir(tmp_path / "two").read_summary().feature_cache["used"]

    # --batch-size is the global batch: 15 images cannot be shared by 2 processes
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "tlbench", "run", "test_vit",
         "--freeze", "none", "--data", DATA, "--image-size", "32", "--no-pretrained", "--device", "cpu",
         "--batch-size", "15", "-q", "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "tlbench: error: --batch-size 15 does not divide among 2 processes" in done.stderr
    assert not (tmp_path / "bad").exists()
