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

    # fp32 on any CPU (`auto` is bf16 on AMX CPUs): 1 and 2 processes are compared to 2e-4.
    values = {"freeze": "none", "data": DATA, "image_size": 32, "pretrained": False, "device": "cpu",
              "epochs": 3, "lr": 0.02, "augment": "none", "dropout": 0.0, "batch_size": 16,
              "amp": "off"}  # fmt: skip
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


def _workers(agent: int) -> list[int]:
    """The worker processes torchrun's agent started (its children)."""
    return [
        int(p) for t in Path(f"/proc/{agent}/task").iterdir() for p in (t / "children").read_text().split()
    ]


def _errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("tlbench: error:")]


def _no_worker_traceback(out: str) -> None:
    """torchrun's agent prints its own summary (and gloo may log a line of its own); no worker raised
    a raw gloo error through tlbench's code."""
    assert not [
        line for line in out.splitlines() if line.startswith(("RuntimeError", "torch.distributed.Dist"))
    ]
    assert not [line for line in out.splitlines() if line.strip().startswith('File "') and "tlbench" in line]


def test_a_bad_timeout_setting_is_one_line_printed_once(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "tlbench", "run", "test_vit",
         "--data", DATA, "--image-size", "32", "--no-pretrained", "--device", "cpu", "-q",
         "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300, env=os.environ | {"TLBENCH_DIST_TIMEOUT": "abc"},
    )  # fmt: skip
    assert done.returncode != 0 and "ValueError" not in done.stderr
    assert _errors(done.stderr) == [
        "tlbench: error: TLBENCH_DIST_TIMEOUT 'abc' is not a number of seconds in [1, 86400]. "
        "e.g. TLBENCH_DIST_TIMEOUT=600, or unset it (600 s)"
    ]
    assert not (tmp_path / "r").exists()


def _ended_early(proc: subprocess.Popen[str]) -> str:
    """What a DDP run that ended (or hung) before the test could strike printed."""
    if proc.poll() is None:
        return "the DDP run made no progress in time"
    return "the DDP run ended early:\n" + (proc.stdout.read() if proc.stdout else "")[-4000:]


def test_a_stopped_or_killed_rank_ends_the_job_with_one_line_and_the_run_resumes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A rank stopped (SIGSTOP): the other gives up after the collective timeout; a rank killed
    (SIGKILL) mid-epoch: the other stops at once. Each time one `tlbench: error:` line (rank 0's)
    names the lost rank and the resume command, exit 10; the run then resumes in one process, with
    a note, and config.json records both jobs' world sizes."""
    from tlbench.rundir import RunDir
    from tlbench.train.api import train
    from tlbench.train.distributed import peer_state

    run = tmp_path / "two"
    # The stopped rank is given up after the collective timeout: short enough for a test, long enough
    # that a rank slowed by a busy machine is not mistaken for a stopped one; a killed rank is noticed
    # at once (its connection resets), whatever the timeout.
    timeouts = {signal.SIGSTOP: 15, signal.SIGKILL: 120}
    for resume, sig in ((False, signal.SIGSTOP), (True, signal.SIGKILL)):
        env = os.environ | {"TLBENCH_DIST_TIMEOUT": str(timeouts[sig])}
        cell = _cell(tmp_path / f"{sig.name}.json", _config(run, epochs=6), resume=resume)
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2",
             "-m", "tlbench.train.worker", str(cell)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        try:
            done = len(RunDir(run).read_metrics()) if (run / "metrics.csv").is_file() else 0
            deadline = time.monotonic() + 180
            while not (run / "metrics.csv").is_file() or len(RunDir(run).read_metrics()) <= done:
                assert proc.poll() is None and time.monotonic() < deadline, _ended_early(proc)
                time.sleep(0.05)
            rank0 = RunDir(run).holder()
            (rank1,) = [p for p in _workers(proc.pid) if p != rank0]
            os.kill(rank1, sig)
            if sig == signal.SIGSTOP:  # rank 0 gives up after the timeout; then the stopped rank goes too
                while peer_state(os.uname().nodename, rank0) is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                os.kill(rank1, signal.SIGKILL)
            out, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
        _no_worker_traceback(out)
        what = "was stopped (SIGSTOP)" if sig == signal.SIGSTOP else "ended (killed or crashed)"
        assert _errors(out) == [
            f"tlbench: error: a process of this 2-process job was lost: rank 1 (pid {rank1}) {what}"
            + (
                f"; rank 0 gave up after the collective timeout ({timeouts[sig]} s, TLBENCH_DIST_TIMEOUT)"
                if resume is False
                else ""
            )
            + f". resume with: tlbench run --resume {run}"
        ], out
        # torchrun's own summary names the first rank it saw fail: rank 0 with tlbench's exit code
        # 10, or, when rank 1's end (the test kills it in both cases) reached torchrun first, its SIGKILL
        assert proc.returncode != 0
        flat = out.replace(" ", "")
        assert "exitcode:10" in flat or "Signal9(SIGKILL)" in flat, out
        assert RunDir(run).has_checkpoint and not RunDir(run).finished
    reached = int(RunDir(run).load_checkpoint()["epoch"])
    capfd.readouterr()
    train(_config(run, epochs=6), resume=run, progress=False)  # one process now: the same global batch
    assert [m.epoch for m in RunDir(run).read_metrics()] == [1, 2, 3, 4, 5, 6]
    # resumed with another world size: a one-line note, and config.json agrees with summary.json
    note = f"note: resumed with 1 process(es) of 16 images (epochs 1-{reached} ran with 2 of 8)"
    assert note in " ".join(capfd.readouterr().err.split())
    record = RunDir(run).read_config().resolved.distributed
    assert record is not None and RunDir(run).read_summary().world_size == record["world_size"] == 1
    assert record["per_rank_batch"] == 16
    assert record["earlier"] == [
        {"world_size": 2, "backend": "gloo", "per_rank_batch": 8, "until_epoch": reached}
    ]
