"""A training run under faults made for real: two processes on one folder, a full disk, SIGTERM
before training, damaged checkpoints, a diverging loss, a resume from another directory.

Each test starts a real `tlbench` process where the fault needs another process (a lock holder, a
signal), and fills a real tmpfs for the full disk; all use timm's test_resnet at 32 px on tiny
synthetic data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = "synthetic:4x40@32"
FAST = ["--data", DATA, "--image-size", "32", "--no-pretrained", "--device", "cpu", "-q"]


def _tlbench(*args: object) -> list[str]:
    return [sys.executable, "-m", "tlbench", *map(str, args)]


def _start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _tlbench(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _strict_json(path: Path) -> dict:
    """JSON as the standard defines it: a bare NaN or Infinity is an error, not a number."""

    def refuse(name: str) -> None:
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_lives(cli, tmp_path: Path) -> None:
    """The first run is a process of its own; the second runs in this one (the same command-line
    code, its exit code and stderr, without a second interpreter importing torch)."""
    from tlbench.rundir import RunDir

    out = tmp_path / "r"
    first = _start("run", "test_resnet", "--freeze", "none", *FAST, "--epochs", "500", "--out", out)
    try:
        _wait_for(lambda: RunDir(out).holder() is not None or first.poll() is not None, "the first run")
        assert RunDir(out).holder() == first.pid
        code, _, err = cli("run", "test_resnet", "--freeze", "none", *FAST, "--seed", "1", "--out", out)
        assert code == 6, err
        assert f"is in use by another tlbench process (pid {first.pid})" in err
        assert "Traceback" not in err
        first.send_signal(signal.SIGTERM)  # stops cleanly at the next batch (or before training)
        assert first.wait(timeout=120) == 130
    finally:
        first.kill()
        first.wait()
    if (out / "config.json").is_file():  # the first run got as far as its config: it is its own
        assert _strict_json(out / "config.json")["config"]["seed"] == 0


def test_sigterm_before_training_leaves_nothing_behind(tmp_path: Path) -> None:
    """Killed while the data is still being made and decoded: exit 130 with a message, and the run
    directory it had claimed (and created) is gone, so the same command can simply run again."""
    from tlbench.rundir import RunDir

    out = tmp_path / "r"
    slow_data = "synthetic:60x50@64"  # 3,000 images to render and decode: several seconds
    proc = _start("run", "test_resnet", "--freeze", "none", "--data", slow_data, "--image-size", "32",
                  "--no-pretrained", "--device", "cpu", "-q", "--out", out)  # fmt: skip
    try:
        _wait_for(lambda: RunDir(out).holder() is not None or proc.poll() is not None, "the run to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM before training started" in err and "Traceback" not in err
    assert not out.exists()


def test_a_full_output_disk_is_exit_6_and_keeps_the_last_checkpoint(cli, tiny_disk: Path) -> None:
    out = tiny_disk / "r"
    code, _, err = cli("run", "test_resnet", "--freeze", "none", *FAST, "--epochs", "1", "--out", out)
    assert code == 6, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tlbench: error: cannot write") and "checkpoint.pt" in last
    assert "No space left on device" in last and "MiB free there" in last and "Traceback" not in err
    # 2 MiB holds the epoch-0 checkpoint, not the epoch-1 one (with momentum buffers): that write
    # fails whole, and the last good checkpoint is intact, so the run resumes once there is room.
    from tlbench.rundir import RunDir

    assert not (out / "summary.json").exists()
    assert RunDir(out).load_checkpoint()["epoch"] == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written file left


def _interrupted_run(out: Path, monkeypatch: pytest.MonkeyPatch, data: str = DATA) -> None:
    """A real unfinished run: Ctrl-C after its first of two epochs, so it holds a checkpoint."""
    from tlbench.errors import Interrupted
    from tlbench.train.api import run_config, train
    from tlbench.train.progress import Ticker

    real = Ticker.epoch_done

    def interrupt(self: Ticker, row: object) -> None:
        real(self, row)
        os.kill(os.getpid(), signal.SIGINT)

    cfg = run_config("test_resnet", freeze="none", data=data, image_size=32, pretrained=False, device="cpu",
                     epochs=2, out=out)  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(Ticker, "epoch_done", interrupt)
        with pytest.raises(Interrupted):
            train(cfg, progress=False)
    assert (out / "checkpoint.pt").is_file() and not (out / "summary.json").exists()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `_interrupted_run`, shared (read it through `_copy_of`), with its data and cache folders
    beside it."""
    root = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLBENCH_DATA", str(root / "data"))
        mp.setenv("TLBENCH_CACHE", str(root / "cache"))
        _interrupted_run(root / "r", mp)
    return root / "r"


def _copy_of(interrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shared unfinished run to damage, resumed on the very data it started on."""
    monkeypatch.setenv("TLBENCH_DATA", str(interrupted.parent / "data"))
    monkeypatch.setenv("TLBENCH_CACHE", str(interrupted.parent / "cache"))
    return Path(shutil.copytree(interrupted, tmp_path / "r"))


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (b"", "EOFError"),  # empty: once read as Ctrl-C (exit 130), and retried forever by a sweep
        (b"garbage, not a checkpoint", "UnpicklingError"),
        (None, ""),  # truncated to half
    ],
    ids=["empty", "garbage", "truncated"],
)
def test_a_damaged_checkpoint_is_a_one_line_error(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted: Path, damage: bytes | None, why: str
) -> None:
    out = _copy_of(interrupted, tmp_path, monkeypatch)
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if damage is None else damage)
    code, _, err = cli("run", "--resume", out)
    assert code == 6, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tlbench: error: cannot load") and "checkpoint is damaged" in last
    assert why in last and "Traceback" not in err


def test_a_checkpoint_with_code_in_it_is_refused(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted: Path
) -> None:
    """A crafted checkpoint in a shared folder runs nothing: it is loaded with weights_only=True."""
    import pickle

    out = _copy_of(interrupted, tmp_path, monkeypatch)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, (f"touch {marker}",))

    (out / "checkpoint.pt").write_bytes(pickle.dumps({"epoch": 0, "x": Exploit()}))
    code, _, err = cli("run", "--resume", out)
    assert code == 6 and "checkpoint is damaged" in err, err
    assert not marker.exists()


def test_a_diverging_loss_stops_the_run_as_diverged(cli, tmp_path: Path) -> None:
    out = tmp_path / "r"
    code, _, err = cli("run", "test_resnet", "--freeze", "none", *FAST, "--epochs", "5", "--lr", "10",
                       "--out", out)  # fmt: skip
    assert code == 9, err
    assert "became nan" in err.lower() or "became inf" in err.lower()
    last = err.strip().splitlines()[-1]
    assert last.startswith("tlbench: error: the ") and "loss became" in last and "lower --lr" in last
    summary = _strict_json(out / "summary.json")  # valid JSON: null, never a bare NaN
    assert summary["status"] == "diverged" and summary["final_val_top1"] is None
    assert summary["epochs"] < 5 and not (out / "checkpoint.pt").exists()
    assert not (out / "model").exists()  # a diverged model is not exported
    code, _, err = cli("report", out)  # listed apart, never ranked
    assert code == 4 and "diverged" in err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_options_are_refused_up_front(cli, tmp_path: Path, value: str) -> None:
    code, _, err = cli(
        "run", "test_resnet", "--freeze", "none", *FAST, "--lr", value, "--out", tmp_path / "r"
    )
    assert code == 2 and "--lr" in err and "finite" in err
    assert not (tmp_path / "r").exists()


def test_resume_works_from_another_directory(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.json records the data folder as an absolute path, not as typed (`--data d`)."""
    code, _, err = cli("data", "synth", tmp_path / "work" / "d", "--classes", "4", "--per-class", "40",
                       "--size", "32")  # fmt: skip
    assert code == 0, err
    monkeypatch.chdir(tmp_path / "work")
    _interrupted_run(tmp_path / "r", monkeypatch, data="d")
    config = _strict_json(tmp_path / "r" / "config.json")["config"]
    assert config["data"] == str(tmp_path / "work" / "d")
    monkeypatch.chdir(tmp_path)  # elsewhere: "d" would not be found from here
    code, _, err = cli("run", "--resume", tmp_path / "r", "-q")
    assert code == 0, err
    assert _strict_json(tmp_path / "r" / "summary.json")["epochs"] == 2
