"""`tlbench bench --nproc N`: the train step under DDP on N ranks against one rank, on the CPU (gloo).

Two tests start real ranks (two processes each; about half a minute apiece on 2 cores, mostly
imports); the rest check the options, the error a failed spawn turns into, and the GPU count,
without a process. The numbers are meaningless on a shared 2-core CPU; their bookkeeping is not.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tlbench.bench import BenchOptions, ddp
from tlbench.bench.worker import run_one
from tlbench.errors import ConfigError, DeviceError

TINY = ["--device", "cpu", "--image-size", "32", "--batch-size", "4", "--warmup", "1", "--steps", "2"]


@pytest.mark.slow
def test_nproc_2_reports_scaling_efficiency(cli, tmp_path: Path) -> None:
    out = tmp_path / "ddp.csv"
    args = ["bench", "test_resnet", "--nproc", "2", *TINY, "--repeats", "2", "--mode", "train", "--out", out]
    code, _, err = cli(*args)
    assert code == 0, err
    printed = " ".join(err.split())  # the console wraps at its width
    assert "test_resnet: 2 ranks (gloo, batch 4 per rank)" in printed and "scaling efficiency" in printed

    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["status"] == "ok" and row["nproc"] == 2 and row["ddp_backend"] == "gloo"
    assert row["ddp_batch_size"] == 4 and row["ddp_global_batch_size"] == 8  # the batch is per rank
    assert row["ddp_threads_per_rank"] >= 1
    assert len(row["ddp_step_ms_runs"]) == len(row["ddp_single_step_ms_runs"]) == 2
    # all ranks together: 2 x 4 images per step; one rank: 4 images per step
    assert row["ddp_samples_per_sec"] == pytest.approx(8 / (row["ddp_step_ms"] / 1000))
    assert row["ddp_single_samples_per_sec"] == pytest.approx(4 / (row["ddp_single_step_ms"] / 1000))
    efficiency = row["scaling_efficiency"]
    assert efficiency == pytest.approx(row["ddp_samples_per_sec"] / (2 * row["ddp_single_samples_per_sec"]))
    assert 0 < efficiency <= 2
    assert row["train_samples_per_sec"] > 0  # the plain measurement is still there
    with out.open() as f:
        (saved,) = list(csv.DictReader(f))
    assert float(saved["scaling_efficiency"]) == pytest.approx(efficiency, rel=1e-5)


def test_the_one_rank_reference_runs_with_a_ranks_threads() -> None:
    """Scaling compares like with like: the one-rank step gets a rank's share of the cores, not the
    thread count `tlbench run` would pick for a whole process."""
    tiny = {"image_size": 32, "batch_size": 2, "warmup": 1, "steps": 1, "repeats": 1}
    options = BenchOptions(device="cpu", mode="train", **tiny)
    before = torch.get_num_threads()
    assert ddp.measure_single("test_resnet", options, 2, threads=1)["threads"] == 1
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_a_rank_that_hangs_ends_in_one_failed_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rank 1 stops answering once its model is built; rank 0 waits in its first collective for
    # --ddp-timeout seconds, fails, and the worker ends rank 1: a failed row, not a hang.
    monkeypatch.setenv(ddp.FAULT_ENV, "1:hang")
    payload = {"backbone": "test_resnet", "device": "cpu", "image_size": 32, "batch_size": 4}
    started = time.monotonic()
    row = run_one(
        payload | {"warmup": 1, "steps": 1, "repeats": 1, "mode": "train", "nproc": 2, "ddp_timeout": 5}
    )
    assert row["status"] == "failed" and row["error_type"] == "RankFailed" and row["exit_code"] == 1
    assert row["error"].startswith("rank 0 of 2 failed: ") and "--ddp-timeout" in row["error"]
    assert "\n" not in row["error"]
    assert time.monotonic() - started < 120


def test_nproc_options_are_checked(cli, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nproc times the train step under DDP, not inference"):
        BenchOptions(nproc=2, mode="infer")
    with pytest.raises(ConfigError, match="device --nproc 2 runs rank r on cuda:r"):
        BenchOptions(nproc=2, device="cuda:1")
    with pytest.raises(ConfigError, match="nproc 0 must be at least 1"):
        BenchOptions(nproc=0)
    with pytest.raises(ConfigError, match="ddp_timeout 0 must be positive"):
        BenchOptions(ddp_timeout=0)
    code, _, err = cli("bench", "test_resnet", "--nproc", "2", "--mode", "infer", "--out", tmp_path / "b")
    assert code == 2 and "--nproc times the train step under DDP" in err, err


def test_more_ranks_than_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ddp, "backend_for", lambda options: "nccl")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ddp.check_ranks(BenchOptions(nproc=2))
    with pytest.raises(DeviceError, match=r"--nproc 4 needs 4 GPUs .* has 2") as exc:
        ddp.check_ranks(BenchOptions(nproc=4))
    assert exc.value.exit_code == 7


def test_the_table_shows_the_scaling_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from tlbench import _console
    from tlbench.bench import runner

    wide = Console(stderr=True, width=250, record=True)
    monkeypatch.setattr(runner, "console", lambda: wide)
    monkeypatch.setattr(_console, "console", lambda: wide)  # say()'s lines
    ok = {"model": "test_resnet", "status": "ok", "freeze": "none", "nproc": 2, "ddp_backend": "gloo"}
    ok |= {"ddp_samples_per_sec": 120.0, "ddp_step_ms": 66.7, "scaling_efficiency": 0.75}
    ok |= {"ddp_batch_size": 4, "ddp_single_samples_per_sec": 80.0}
    runner.print_table([ok, {"model": "vgg19", "status": "failed", "error": "rank 1 of 2 failed: x."}])
    text = wide.export_text()
    for header in ("ranks", "DDP img/s", "DDP ms", "scaling"):
        assert header in text
    assert "2 gloo" in text and "120.0" in text and "0.75" in text
    line = "test_resnet: 2 ranks (gloo, batch 4 per rank) 120.0 img/s, "
    line += "1 rank 80.0 img/s: scaling efficiency 0.75"
    assert line in text
    assert "vgg19 failed: rank 1 of 2 failed: x." in " ".join(text.split())
    wide.export_text(clear=True)
    runner.print_table([{**ok, "nproc": 1}])  # no --nproc: no scaling columns
    assert "DDP img/s" not in wide.export_text()


class FakeStore:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.values = {f"error/{r['rank']}": json.dumps(r) for r in records}

    def check(self, keys: list[str]) -> bool:
        return all(k in self.values for k in keys)

    def get(self, key: str) -> bytes:
        return self.values[key].encode()


def _record(rank: int, at: float, error: str, **extra: Any) -> dict[str, Any]:
    return {"rank": rank, "time": at, "error": error, "exit_code": 1, "oom": False} | extra


def test_a_failed_spawn_names_the_first_rank_that_failed() -> None:
    died = RuntimeError("process 0 terminated with exit code 1")
    store = FakeStore(
        [
            _record(0, 2.0, "RuntimeError: Connection closed by peer"),
            _record(1, 1.0, "ModelError: x", exit_code=5),
        ]
    )
    exc = ddp._failure(store, 2, died, 30)  # type: ignore[arg-type]
    assert isinstance(exc, ddp.RankFailed) and exc.exit_code == 5
    assert exc.one_line() == "rank 1 of 2 failed: ModelError: x."
    # a timeout says which setting bounds the wait
    store = FakeStore([_record(0, 1.0, "RuntimeError: Timed out waiting 5000ms for recv")])
    assert "waits 30 s (--ddp-timeout)" in ddp._failure(store, 2, died, 30).one_line()  # type: ignore[arg-type,union-attr]
    # an out-of-memory on any rank is an out-of-memory, so that the batch is halved for all
    store = FakeStore([_record(1, 1.0, "OutOfMemoryError: CUDA out of memory", oom=True)])
    assert isinstance(ddp._failure(store, 2, died, 30), torch.OutOfMemoryError)  # type: ignore[arg-type]
    # a rank that died without a word (a signal): what the spawn saw
    killed = RuntimeError("process 1 terminated with signal SIGKILL")
    exc = ddp._failure(FakeStore([]), 2, killed, 30)  # type: ignore[arg-type]
    assert exc.one_line() == "train step on 2 ranks: process 1 terminated with signal SIGKILL."
