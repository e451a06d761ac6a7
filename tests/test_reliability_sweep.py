"""A sweep under real faults: `kill -9` of the sweep or of a cell, two sweeps on one folder, repeats.

Each fault is made for real (real processes, real signals) on a one-cell sweep of `test_resnet` at
16 px on 4 x 24 synthetic images, where an epoch takes a fraction of a second on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

EPOCHS = 10  # long enough (a second or more) that a cell is still training when the test strikes
CELL = "test_resnet-keras-vgg19-fnone-s0"
OPTIONS = ["--data", "synthetic:4x24@32", "--image-size", "16", "--no-pretrained", "--device", "cpu"]


def _sweep_args(folder: Path, epochs: int = EPOCHS) -> list[str]:
    return [
        "sweep",
        "--backbones",
        "test_resnet",
        "--freeze",
        "none",
        "--out",
        str(folder),
        *OPTIONS,
        "--batch-size",
        "16",
        "--epochs",
        str(epochs),
    ]


def _start_sweep(folder: Path, epochs: int = EPOCHS) -> subprocess.Popen:
    """`tlbench sweep` in its own process, its output in `<folder>.out`."""
    out = folder.parent / f"{folder.name}.out"
    cmd = [sys.executable, "-m", "tlbench", *_sweep_args(folder, epochs)]
    return subprocess.Popen(cmd, stdout=out.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait(what: Callable[[], T], timeout: float = 120.0) -> T:
    """Poll until `what()` is truthy; return it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"still waiting after {timeout:.0f} s")


def _training_pid(cell: Path) -> int | None:
    """The pid of the process training in `cell`, once it has its first checkpoint."""
    from tlbench.rundir import RunDir

    run = RunDir(cell)
    return run.holder() if run.has_checkpoint else None


def _state(folder: Path) -> dict[str, dict[str, Any]]:
    return json.loads((folder / "state.json").read_text())


def _cell_log(folder: Path) -> str:
    return (folder / "cells" / f"{CELL}.log").read_text()


def _epochs_done(cell: Path) -> int:
    return len((cell / "metrics.csv").read_text().strip().splitlines()) - 1


@pytest.mark.slow
def test_a_killed_sweep_takes_its_cell_down_and_a_rerun_resumes_it(cli, tmp_path: Path) -> None:
    from tlbench.rundir import RunDir

    folder = tmp_path / "s"
    cell = folder / "cells" / CELL
    sweep = _start_sweep(folder)
    try:
        pid = _wait(lambda: _training_pid(cell))
    finally:
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
    # the kernel signals the orphan, which stops at its next batch: the folder is free within seconds
    _wait(lambda: RunDir(cell).holder() is None, timeout=15)
    assert pid != sweep.pid and not RunDir(cell).finished and RunDir(cell).has_checkpoint
    assert _state(folder)[CELL]["status"] == "running"  # what the killed sweep last wrote

    code, _, err = cli(*_sweep_args(folder))
    assert code == 0, err
    state = _state(folder)[CELL]
    assert state["status"] == "finished" and state["attempts"] == 2, state
    assert RunDir(cell).finished and _epochs_done(cell) == EPOCHS
    assert "resuming" in _cell_log(folder)  # from its checkpoint, not from scratch


def test_a_rerun_leaves_alone_a_cell_that_another_process_trains_in(cli, tmp_path: Path) -> None:
    """An orphan of an older tlbench (no parent-death signal), or a `tlbench run --resume` by hand."""
    from tlbench.rundir import RunDir

    folder = tmp_path / "s"
    cell = folder / "cells" / CELL
    holder = RunDir(cell).claim()  # this test's process stands in for the other one
    try:
        code, _, err = cli(*_sweep_args(folder, epochs=1))
    finally:
        holder.release()
    assert code == 0, err
    assert f"{CELL} running: in another process (pid {os.getpid()}); left alone" in err
    state = _state(folder)[CELL]
    assert state["status"] == "running" and state["attempts"] == 0 and state["pid"] == os.getpid()
    assert cell.is_dir() and not (folder / "cells" / f"{CELL}.log").exists()  # not deleted, not started


@pytest.mark.slow
def test_a_second_sweep_on_the_same_folder_is_refused(cli, tmp_path: Path) -> None:
    import timm  # noqa: F401  (imported before the race starts, so the second sweep gets there in time)

    from tlbench._io import FolderLock

    folder = tmp_path / "s"
    first = _start_sweep(folder, epochs=2)
    try:
        _wait(lambda: FolderLock(folder).holder() == first.pid)
        code, _, err = cli(*_sweep_args(folder, epochs=2))
    finally:
        assert first.wait(timeout=180) == 0, (tmp_path / "s.out").read_text()
    assert code == 6, err
    assert f"the sweep folder {folder} is in use by another tlbench process (pid {first.pid})" in err
    assert len(err.strip().splitlines()) == 1, err
    state = _state(folder)[CELL]  # the first sweep's cell, untouched by the second sweep
    assert state["status"] == "finished" and state["attempts"] == 1, state
    assert sum(line.startswith("--- ") for line in _cell_log(folder).splitlines()) == 1  # started once


@pytest.mark.slow
def test_a_cell_killed_by_a_signal_is_recorded_as_such_and_resumed(cli, tmp_path: Path) -> None:
    from tlbench.rundir import RunDir

    folder = tmp_path / "s"
    cell = folder / "cells" / CELL
    killed: list[int] = []

    def kill_the_cell() -> None:
        pid = _wait(lambda: _training_pid(cell))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_cell, daemon=True)
    killer.start()
    code, _, err = cli(*_sweep_args(folder))
    killer.join(timeout=5)
    assert killed and code == 1, err
    state = _state(folder)[CELL]
    assert state["status"] == "failed" and state["exit_code"] == -9, state
    assert state["error"] == "killed by signal 9 (SIGKILL)" and state["pid"] is None
    assert f"sweep: {CELL} failed: killed by signal 9 (SIGKILL)" in err

    code, _, err = cli(*_sweep_args(folder))
    assert code == 0, err
    state = _state(folder)[CELL]
    assert state["status"] == "finished" and state["attempts"] == 2 and state["error"] is None
    assert RunDir(cell).finished and _epochs_done(cell) == EPOCHS
    assert "resuming" in _cell_log(folder)


def test_repeated_grid_values_make_one_cell_each(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlbench.sweep import run_sweep

    code, _, err = cli(
        "sweep",
        "--backbones",
        "test_resnet,test_resnet",
        "--freeze",
        "none,all",
        "--freeze",
        "none",
        "--seeds",
        "0,1,0,0",
        "--dry-run",
        "--out",
        tmp_path / "s",
        *OPTIONS,
    )
    assert code == 0, err
    assert "dropped the repeated backbones test_resnet; freeze depths none; seeds 0" in err
    assert "4 cell(s)" in err  # 1 backbone x 2 freeze depths x 2 seeds

    monkeypatch.chdir(tmp_path)
    folders = [
        run_sweep(
            ["test_resnet"],
            ["all"],
            ["keras-vgg19"],
            seeds,
            {},
            out=None,
            gpus=[],
            baselines=False,
            dry_run=True,
        )[0]
        for seeds in ([0], [0, 0])
    ]
    assert folders[0] == folders[1]  # the same sweep, so the same folder

    code, _, err = cli("sweep", "--backbones", "test_resnet,test/resnet", "--dry-run", *OPTIONS)
    assert code == 2 and "give the same cell test_resnet-keras-vgg19-f11-s0" in err, err


def test_a_damaged_sweep_folder_is_named_in_one_line(cli, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    manifest = folder / "manifest.json"
    manifest.write_text('{"executor": "loc')  # cut short
    code, _, err = cli(*_sweep_args(folder), "--status")
    assert code == 6 and "Traceback" not in err, err
    assert f"tlbench: error: {manifest} is damaged (not JSON" in err and "another --out" in err

    manifest.write_text(json.dumps({"executor": "local", "gpus": [], "run_options": {}}))
    states = folder / "state.json"
    for content, problem in (
        (b'{"a": "\xff\xfe"}', "not UTF-8 text"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"a": 3}', "a cell's entry is not an object"),
    ):
        states.write_bytes(content)
        for extra in (["--status"], ["--epochs", "1"]):  # shown, or run again: the same line
            code, _, err = cli(*_sweep_args(folder), *extra)
            assert code == 6 and "Traceback" not in err, err
            assert f"tlbench: error: {states} is damaged ({problem})" in err, err
            assert "move it away" in err and states.read_bytes() == content  # nothing overwritten


def test_a_sweep_into_a_run_directory_is_refused(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "summary.json"):
        (run / name).write_text("{}")
    code, _, err = cli(*_sweep_args(run, epochs=1))
    assert code == 6 and f"tlbench: error: {run} is a run directory, not a sweep folder" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "summary.json"]


def test_an_edited_recipe_file_is_another_sweep(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.sweep import run_sweep

    recipe = tmp_path / "my.yaml"
    recipe.write_text("optimizer: sgd\nlr: 1e-3\nbatch_size: 16\n")
    monkeypatch.chdir(tmp_path)

    def default_folder() -> Path:
        grid = (["test_resnet"], ["none"], [str(recipe)], [0])
        return run_sweep(*grid, {}, out=None, gpus=[], baselines=False, dry_run=True)[0]

    before = default_folder()
    folder = tmp_path / "s"
    args = ["sweep", "--backbones", "test_resnet", "--freeze", "none", "--recipes", str(recipe), "--out"]
    args += [str(folder), *OPTIONS, "--epochs", "1"]
    code, _, err = cli(*args)
    assert code == 0, err

    recipe.write_text("optimizer: sgd\nlr: 1e-1\nbatch_size: 16\n")  # edited after the sweep ran
    assert default_folder() != before  # without --out: a folder of its own
    (summary_file,) = (folder / "cells").glob("*/summary.json")
    summary = summary_file.read_bytes()
    code, _, err = cli(*args)
    assert code == 6 and "Traceback" not in err, err
    assert f"tlbench: error: the recipe file {recipe} changed since the sweep in {folder} began" in err
    assert summary_file.read_bytes() == summary  # the cell trained with the old values is kept


def test_what_every_cell_needs_is_checked_before_the_first_starts(cli, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    grid = ["sweep", "--backbones", "test_resnet", "--freeze", "none,all", "--out", str(folder)]
    fast = ["--image-size", "16", "--device", "cpu", "--epochs", "1"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args, code, line in (
        # what a new user types first: no data set, no cached weights (the tests are offline)
        ([], 4, "no --data given and no data set at the default location"),
        (["--data", str(tmp_path / "nowhere")], 4, f"data folder {tmp_path / 'nowhere'} does not exist"),
        (["--data", "synthetic:4x24@32"], 3, "the pretrained weights of test_resnet"),
    ):
        got, _, err = cli(*grid, *fast, *args)
        assert got == code and f"tlbench: error: {line}" in err and "Traceback" not in err, (args, err)
        assert not folder.exists(), args  # no folder, no cell started
    bad_out = ["--out", str(blocker / "s"), "--data", "synthetic:4x24@32", "--no-pretrained"]
    got, _, err = cli(*grid, *fast, *bad_out)
    assert got == 6 and "tlbench: error: output folder" in err and "not writable" in err, err


def test_a_stopped_cell_is_named_with_since_when_and_the_sweep_finishes_once_it_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cell stopped with SIGSTOP writes nothing: after TLBENCH_STALL_S the sweep names it once
    (which cell, since when, its process stopped) and keeps waiting; SIGCONT, and the sweep ends."""
    monkeypatch.setenv("TLBENCH_STALL_S", "2")
    folder = tmp_path / "s"
    cell = folder / "cells" / CELL
    sweep = _start_sweep(folder)
    out = folder.parent / f"{folder.name}.out"
    try:
        pid = _wait(lambda: _training_pid(cell))
        os.kill(pid, signal.SIGSTOP)
        try:
            _wait(lambda: "has not advanced" in out.read_text(), timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert sweep.wait(timeout=180) == 0, out.read_text()
    finally:
        if sweep.poll() is None:
            sweep.kill()
    text = out.read_text()
    line = next(x for x in text.splitlines() if "has not advanced" in x)
    assert CELL in line and f"its process {pid} is stopped" in line and f"kill -CONT {pid}" in line
    # named once for this stall, not at every poll (a slow epoch later may be named again, as running)
    assert text.count(f"its process {pid} is stopped") == 1
    assert _state(folder)[CELL]["status"] == "finished"


def test_a_bad_stall_setting_is_one_line() -> None:
    from tlbench.errors import ConfigError
    from tlbench.sweep.stall import stall_seconds

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLBENCH_STALL_S", "soon")
        with pytest.raises(ConfigError, match="TLBENCH_STALL_S 'soon' is not a positive number"):
            stall_seconds()
        mp.setenv("TLBENCH_STALL_S", "0")
        with pytest.raises(ConfigError):
            stall_seconds()
