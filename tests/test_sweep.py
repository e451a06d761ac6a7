"""`tlbench sweep`: every cell in its own process, failures recorded, reruns skip finished cells."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

COMMON = [
    "--data",
    "synthetic:4x24@32",
    "--epochs",
    "1",
    "--image-size",
    "16",
    "--no-pretrained",
    "--device",
    "cpu",
    "--batch-size",
    "16",
]
# COMMON as the run options the CLI hands the sweep: only what was given, as run_config arguments
COMMON_OPTIONS = {
    "data": "synthetic:4x24@32",
    "epochs": 1,
    "image_size": 16,
    "pretrained": False,
    "device": "cpu",
    "batch_size": 16,
}


def _state(folder: Path) -> dict[str, dict]:
    return json.loads((folder / "state.json").read_text())


def test_dry_run_checks_every_cell_up_front(cli, tmp_path: Path) -> None:
    code, _, err = cli(
        "sweep",
        "--backbones",
        "test_resnet,vgg11",
        "--freeze",
        "none,50%,15",
        "--seeds",
        "0,1",
        "--dry-run",
        "--out",
        tmp_path / "s",
        *COMMON,
        "--protocols",
        "none",  # the default, said out loud: no evaluation
    )
    assert code == 0, err
    assert "vgg11-keras-vgg19-f15-s0 will not run" in err and "0-14" in err  # vgg11 has 14 entries
    assert "test_resnet-keras-vgg19-f15-s1 will not run" in err
    assert "12 cell(s)" in err and not (tmp_path / "s").exists()


def test_the_default_folder_is_named_by_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.sweep import run_sweep

    monkeypatch.chdir(tmp_path)

    def folder(run_options: dict[str, Any], seeds: list[int]) -> Path:
        out, _ = run_sweep(
            ["test_resnet"],
            ["all"],
            ["keras-vgg19"],
            seeds,
            run_options,
            out=None,
            gpus=[],
            baselines=False,
            dry_run=True,
            progress=False,
        )
        return out

    same = folder({"epochs": 1}, [0])
    assert same == folder({"epochs": 1}, [0])  # the same command continues the same sweep
    assert same.parent == Path("results/sweeps")
    assert folder({"epochs": 2}, [0]) != same and folder({"epochs": 1}, [0, 1]) != same


def test_bad_forwarded_option(cli, tmp_path: Path) -> None:
    code, _, err = cli("sweep", "--backbones", "test_resnet", "--out", tmp_path / "s", "--epochz", "1")
    assert code == 2 and "--epochz" in err
    for reserved in (["--seed", "1"], ["--recipe=timm-ft"], ["--resume", "x"]):
        code, _, err = cli("sweep", "--backbones", "test_resnet", "--out", tmp_path / "s", *reserved)
        assert code == 2 and "set by the sweep" in err, reserved
    for args, says in (
        (["--ways", "3"], "--ways is for --protocols. add --protocols, or drop --ways"),
        (["--protocols", "linear,svm"], "--protocols 'svm' is not one of linear, knn, fewshot"),
    ):
        code, _, err = cli("sweep", "--backbones", "test_resnet", "--out", tmp_path / "s", *args)
        assert code == 2 and says in err, args
    assert not (tmp_path / "s").exists()


def test_the_sweep_module_does_not_import_the_cli() -> None:
    code = "import sys, tlbench.sweep; assert 'tlbench.cli' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_bad_value_names_the_flag_on_the_command_line_and_the_field_in_python(cli, tmp_path: Path) -> None:
    from tlbench.config import run_config
    from tlbench.errors import ConfigError

    code, _, err = cli("run", "test_resnet", "--image-size", "8", "--out", tmp_path / "r", "-q")
    assert code == 2 and "tlbench: error: --image-size 8 must be in [16, 1024]" in err, err
    code, _, err = cli("run", "test_resnet", "--aug", "mixup", "--out", tmp_path / "r", "-q")
    assert code == 2 and "--aug 'mixup' is not one of keras, none" in err, err
    assert not (tmp_path / "r").exists()  # checked before anything ran
    with pytest.raises(ConfigError) as exc:
        run_config("test_resnet", image_size=8)
    assert str(exc.value).startswith("image_size 8 must be in [16, 1024]") and exc.value.field == "image_size"


def test_an_invalid_cell_config_is_named_before_anything_runs(cli, tmp_path: Path) -> None:
    options = [*COMMON[:4], "--image-size", "8", "--no-pretrained", "--device", "cpu"]
    code, _, err = cli(
        "sweep", "--backbones", "test_resnet", "--freeze", "all", "--out", tmp_path / "s", *options
    )
    assert code == 1 and "test_resnet-keras-vgg19-fall-s0 will not run: image_size 8" in err
    state = _state(tmp_path / "s")["test_resnet-keras-vgg19-fall-s0"]
    assert state["status"] == "invalid" and state["attempts"] == 0
    assert state["error"].startswith("image_size 8 must be in [16, 1024]")
    assert not (tmp_path / "s" / "cells" / "test_resnet-keras-vgg19-fall-s0.json").exists()


def test_the_worker_reports_a_bad_cell_file_as_the_cli_does(tmp_path: Path) -> None:
    from tlbench.sweep.state import error_line

    cell = tmp_path / "cell.json"
    cell.write_text(json.dumps({"kind": "run", "config": {"backbone": "test_resnet"}}))
    res = subprocess.run(
        [sys.executable, "-m", "tlbench.train.worker", str(cell)], capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.startswith("tlbench: error: "), res.stderr
    log = tmp_path / "cell.log"
    log.write_text(res.stderr)
    assert error_line(log).startswith(f"{cell} holds a run config this tlbench cannot use")


class _FakeProcess:
    """Stands in for a cell's process: records its command and exits at once with `code`."""

    commands: ClassVar[list[list[str]]] = []

    def __init__(self, cmd: list[str], **kwargs: Any) -> None:
        _FakeProcess.commands.append(list(cmd))
        self.code = 3
        self.pid = 0

    def poll(self) -> int:
        return self.code


def _fake_cells(monkeypatch: pytest.MonkeyPatch, process: type = _FakeProcess) -> None:
    """Cell processes become `process`; any other process (torch's first import runs ldconfig) stays real.

    Cells start as their own interpreters here (`TLBENCH_SWEEP_FORK=0`), where Popen is replaced.
    These cells never load weights, so the sweep's check that they can be had (offline here) passes.
    """
    from tlbench.models import weights
    from tlbench.sweep import runner

    monkeypatch.setattr(weights, "check_weights_reachable", lambda backbone: "not needed")

    monkeypatch.setenv("TLBENCH_SWEEP_FORK", "0")
    real = subprocess.Popen

    def popen(cmd: Any, **kwargs: Any) -> Any:
        return process(cmd, **kwargs) if "tlbench.train.worker" in cmd else real(cmd, **kwargs)

    monkeypatch.setattr(runner.subprocess, "Popen", popen)


def test_each_cell_runs_the_worker_on_its_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlbench.config import RunConfig, run_config
    from tlbench.sweep import run_sweep

    folder = tmp_path / "s"
    resumable = folder / "cells" / "test_resnet-keras-vgg19-fall-s1"
    resumable.mkdir(parents=True)
    (resumable / "checkpoint.pt").write_bytes(b"")  # a cell that stopped after a checkpoint
    _FakeProcess.commands = []
    _fake_cells(monkeypatch)
    options = {"data": "synthetic:4x24@32", "epochs": 2, "lr": 0.01, "device": "cpu"}
    _, states = run_sweep(
        ["test_resnet"],
        ["all"],
        ["keras-vgg19"],
        [0, 1],
        options,
        out=folder,
        gpus=[],
        baselines=True,
        dry_run=False,
        progress=False,
    )
    cells = folder / "cells"
    run0, run1, base = (
        cells / "test_resnet-keras-vgg19-fall-s0.json",
        cells / "test_resnet-keras-vgg19-fall-s1.json",
        cells / "test_resnet-baseline.json",
    )
    # every process is the worker on the cell's file, nothing else
    assert _FakeProcess.commands == [
        [sys.executable, "-m", "tlbench.train.worker", str(path)] for path in (run0, run1, base)
    ]
    cell = json.loads(run0.read_text())
    assert cell["kind"] == "run" and cell["resume"] is False
    expected = run_config(
        "test_resnet",
        "keras-vgg19",
        freeze="all",
        seed=0,
        out=cells / "test_resnet-keras-vgg19-fall-s0",
        **options,
    )
    assert RunConfig.from_dict(cell["config"]) == expected  # the same config `tlbench run` would build
    assert cell["config"]["recipe"]["lr"] == 0.01 and cell["config"]["recipe"]["batch_size"] == 32
    assert json.loads(run1.read_text())["resume"] is True
    baseline = json.loads(base.read_text())
    assert baseline["kind"] == "baseline" and "resume" not in baseline
    assert baseline["config"]["data"] == "synthetic:4x24@32" and baseline["config"]["device"] == "cpu"
    assert baseline["config"]["out"] == str(cells / "test_resnet-baseline")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["run_options"] == options
    assert {s.status for s in states.values()} == {"failed"}  # exit 3 without a summary
    assert all(s.exit_code == 3 and s.error == "exited without output" for s in states.values())


class _ErrorProcess(_FakeProcess):
    """A cell's process that prints an error holding rich markup, and exits 3."""

    def __init__(self, cmd: list[str], stdout: Any, **kwargs: Any) -> None:
        super().__init__(cmd)
        stdout.write("tlbench: error: cannot read /data/[/]/x [bold]y[/bold]\n")
        stdout.flush()


def test_paths_and_errors_are_printed_as_plain_text(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cells(monkeypatch, _ErrorProcess)
    folder, cell = tmp_path / "odd [/] [bold]name", "test_resnet-keras-vgg19-fnone-s0"
    args = ["sweep", "--backbones", "test_resnet", "--freeze", "none,15", "--out", folder, *COMMON]
    code, _, err = cli(*args)
    assert code == 1, err
    assert "test_resnet-keras-vgg19-f15-s0 will not run" in err
    assert f"{cell} failed: cannot read /data/[/]/x [bold]y[/bold]" in err
    assert f"sweep {folder}: 1 failed, 1 invalid" in " ".join(err.split())  # however it wraps
    code, _, err = cli(*args, "--dry-run")
    assert code == 0 and "2 cell(s)" in err, err


GRID = ["sweep", "--backbones", "test_resnet,test_efficientnet", "--freeze", "none,all", *COMMON]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 2 x 2 local sweep (`GRID`, seed 0) in `<root>/grid`, its cells forked from the
    zygote, their first- and last-batch marks in `<root>/timeline.jsonl`; the data and cache folders
    it ran with are `<root>/data` and `<root>/cache` (`_use_grid_folders`). Shared by the tests
    that read it: the grid's own and the fork's."""
    from tlbench.cli import main

    root = tmp_path_factory.mktemp("grid")
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        _use_grid_folders(root / "grid", mp)
        mp.setenv("TLBENCH_TIMELINE", str(root / "timeline.jsonl"))
        with pytest.raises(SystemExit) as exc:
            main([*GRID, "--out", str(root / "grid")])
    assert exc.value.code == 0, err.getvalue()
    return root / "grid"


def _use_grid_folders(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data and cache folders of the sweep in `folder` (`grid`): a sweep or run asked for here
    reads the very data its cells trained on."""
    monkeypatch.setenv("TLBENCH_DATA", str(folder.parent / "data"))
    monkeypatch.setenv("TLBENCH_CACHE", str(folder.parent / "cache"))


@pytest.mark.slow
def test_each_cell_is_a_fork_in_its_own_process_with_the_numbers_of_its_own_interpreter(
    cli, grid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local sweep forks each cell from its zygote (`tlbench.sweep.zygote`), which imported torch
    and timm once: still one process per cell, each with its own log, and the same numbers as a
    cell started as its own interpreter (`TLBENCH_SWEEP_FORK=0`)."""
    from tlbench._timeline import read

    timeline = tmp_path / "timeline.jsonl"  # the grid's marks, and then this test's own
    shutil.copy(grid.parent / "timeline.jsonl", timeline)
    events = read(timeline)
    pids = [e["pid"] for e in events if e["event"] == "first_batch"]
    assert len(set(pids)) == 4 and os.getpid() not in pids  # one process per cell, not the sweep's
    assert [e["pid"] for e in events if e["event"] == "last_batch"] == pids
    for cell, state in _state(grid).items():
        log = (grid / "cells" / f"{cell}.log").read_text()
        assert state["status"] == "finished" and log.startswith("--- ") and "training from scratch" in log

    _use_grid_folders(grid, monkeypatch)
    monkeypatch.setenv("TLBENCH_TIMELINE", str(timeline))
    monkeypatch.setenv("TLBENCH_SWEEP_FORK", "0")
    args = ["sweep", "--backbones", "test_resnet", "--freeze", "none", *COMMON]
    code, _, err = cli(*args, "--seeds", "0", "--out", tmp_path / "own")
    assert code == 0, err
    cell = "test_resnet-keras-vgg19-fnone-s0"
    assert len(read(timeline)) == 4 * 2 + 2  # this cell's two marks, from a process of its own
    for name in ("predictions.csv", "per_class.csv"):
        forked = (grid / "cells" / cell / name).read_text()
        assert forked == (tmp_path / "own" / "cells" / cell / name).read_text(), name


@pytest.mark.slow
def test_two_by_two_grid_finishes_and_a_rerun_skips_it(
    cli, grid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, args = grid, [*GRID, "--out", grid]
    state = _state(folder)
    assert len(state) == 4 and {s["status"] for s in state.values()} == {"finished"}
    stamps = {c: (folder / "cells" / c / "summary.json").stat().st_mtime_ns for c in state}

    _use_grid_folders(grid, monkeypatch)
    logs = {c: (folder / "cells" / f"{c}.log").read_text() for c in state}
    code, _, err = cli(*args)
    assert code == 0, err
    # nothing to run: no cell process started (each start appends a header to the cell's log)
    assert {c: (folder / "cells" / f"{c}.log").read_text() for c in state} == logs
    assert {c: (folder / "cells" / c / "summary.json").stat().st_mtime_ns for c in state} == stamps
    assert all(s["attempts"] == 1 for s in _state(folder).values())

    code, out, _ = cli("report", folder, "--format", "csv")
    assert code == 0 and len(out.strip().splitlines()) == 1 + 4  # header + one row per configuration
    code, _, err = cli(
        "report", folder, "--format", "html", "--out", tmp_path / "r.html", "--plots", tmp_path / "p"
    )
    page = (tmp_path / "r.html").read_text()
    rows = [line for line in page.split("<tr") if "data-backbone=" in line]  # the summary table's rows
    backbones = sorted(row.split("data-backbone='")[1].split("'")[0] for row in rows)
    assert code == 0 and backbones == ["test_efficientnet"] * 2 + ["test_resnet"] * 2
    assert len(list((tmp_path / "p").glob("*.png"))) >= 3


@pytest.mark.slow
def test_protocols_evaluate_every_backbone_of_the_grid_once(
    cli, grid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--protocols` evaluates every backbone's frozen features into SWEEP/eval after the cells: a
    failed evaluation is one line and exit 1, the runs kept; `tlbench report SWEEP` shows the
    protocols beside the runs; the same command again leaves a finished evaluation alone."""
    folder = tmp_path / "grid"
    shutil.copytree(grid, folder)  # its 4 cells have finished: only the evaluation runs
    _use_grid_folders(grid, monkeypatch)
    monkeypatch.setenv("TLBENCH_SWEEP_FORK", "0")  # no cell to start: no zygote
    episodes = ["--protocols", "linear,knn,fewshot", "--shots", "1,2", "--queries", "2", "--episodes", "5"]
    args = [*GRID, "--out", folder, *episodes]
    summaries = {c: (folder / "cells" / c / "summary.json").read_text() for c in _state(folder)}

    code, _, err = cli(*args)  # 5-way episodes (the default) from 4 classes
    failed = [line for line in err.splitlines() if "evaluation failed" in line]
    assert code == 1 and "Traceback" not in err and len(failed) == 2, err  # the reason, and the summary
    assert failed[0].startswith("sweep: the evaluation failed: 5-way episodes need 5 evaluation classes")
    assert not (folder / "eval" / "eval.json").exists()
    assert {c: (folder / "cells" / c / "summary.json").read_text() for c in _state(folder)} == summaries

    code, _, err = cli(*args, "--ways", "2")
    assert code == 0 and f"evaluation in {folder / 'eval'}" in err, err
    doc = json.loads((folder / "eval" / "eval.json").read_text())
    assert [r["backbone"] for r in doc["rows"]] == ["test_resnet", "test_efficientnet"]
    assert all("fewshot_2w2s_prototype" in r and "knn_top1" in r for r in doc["rows"])
    # the sweep's shared settings: its data, image size, weights, device and selection split
    shared = [doc["options"][k] for k in ("data", "image_size", "pretrained", "device", "select")]
    assert shared == ["synthetic:4x24@32", 16, False, "cpu", "10%"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["evaluation"]["protocols"] == ["linear", "knn", "fewshot"]
    stamp = (folder / "eval" / "eval.json").stat().st_mtime_ns

    code, _, err = cli(*args, "--ways", "2")  # the same command: the evaluation is not redone
    assert code == 0 and f"sweep: {folder / 'eval'} holds the evaluation already\n" in err, err
    assert (folder / "eval" / "eval.json").stat().st_mtime_ns == stamp

    code, out, _ = cli("report", folder, "--format", "markdown")  # the runs, then the protocols
    protocols = out.split("| backbone | fine-tune top-1 | linear | k-NN | 2-way 1-shot | 2-way 2-shot |")[1]
    rows = [line.split(" | ") for line in protocols.splitlines() if line.startswith("| test_")]
    assert code == 0 and [r[0] for r in rows] == ["| test_resnet", "| test_efficientnet"], out
    assert all(r[1] != "-" for r in rows)  # the fine-tune top-1 of each backbone's runs beside them
    code, out, _ = cli("report", folder / "eval", "--format", "json")
    assert code == 0 and [r["backbone"] for r in json.loads(out)] == ["test_resnet", "test_efficientnet"]
    code, out, err = cli("report", folder, "--format", "json")  # both tables: an object of them
    both = json.loads(out)
    assert code == 0 and sorted(both) == ["protocols", "runs"], err
    assert [r["backbone"] for r in both["protocols"]] == ["test_resnet", "test_efficientnet"]
    assert {r["backbone"] for r in both["runs"]} == {"test_resnet", "test_efficientnet"}
    code, _, err = cli("report", folder, "--format", "csv")  # one csv cannot hold two tables
    assert code == 2 and "--format json (an object of the tables)" in err.replace("\n", " "), err


@pytest.mark.slow
def test_a_crashing_cell_is_recorded_and_the_others_finish(cli, tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    # vgg11 cannot take 16 px inputs: that cell fails in its own process, the other one finishes
    args = ["sweep", "--backbones", "test_resnet,vgg11", "--freeze", "all", "--out", folder, *COMMON]
    code, _, err = cli(*args)
    assert code == 1, err
    state = _state(folder)
    good, bad = "test_resnet-keras-vgg19-fall-s0", "vgg11-keras-vgg19-fall-s0"
    assert state[good]["status"] == "finished"
    assert (
        state[bad]["status"] == "failed" and state[bad]["exit_code"] == 5 and "vgg11" in state[bad]["error"]
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    # a sweep forwards --select 10% unless told otherwise: each cell's best epoch is chosen on it
    assert manifest["run_options"] == COMMON_OPTIONS | {"select": "10%"} and len(manifest["cells"]) == 2
    summary = folder / "cells" / good / "summary.json"
    assert json.loads(summary.read_text())["best_chosen_on"] == "select"
    stamp = summary.stat().st_mtime_ns

    # the same sweep again: the finished cell is skipped, the failed one retried (and fails again)
    code, _, err = cli(*args)
    state = _state(folder)
    assert code == 1 and state[bad]["attempts"] == 2 and state[good]["attempts"] == 1
    assert summary.stat().st_mtime_ns == stamp

    # other run options into the same folder are refused rather than mixed
    code, _, err = cli("sweep", "--backbones", "test_resnet", "--out", folder, *COMMON, "--lr", "0.1")
    assert code == 6 and "other run options" in err

    # and the report reads the sweep folder, listing the failed cell as skipped
    code, out, err = cli("report", folder, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 1 and rows[0]["backbone"] == "test_resnet"
    assert rows[0]["select"] == "10%" and rows[0]["best_chosen_on"] == "select"
    assert "vgg11-keras-vgg19-fall-s0" in err and "skipped" in err


def test_every_recipe_flag_of_run_is_passed_on_by_a_sweep(cli, tmp_path: Path) -> None:
    """The sweep's help lists every recipe field as a flag (the same schema as `tlbench run`), so
    each is forwarded to the cells, not refused as "not a run option"."""
    from tlbench.cli._schema import cli_fields
    from tlbench.config import RECIPE_OVERRIDES, Recipe

    assert set(RECIPE_OVERRIDES) == {f.name for f in cli_fields(Recipe)}
    code, _, err = cli(
        "sweep", "--backbones", "test_resnet", "--freeze", "none", "--data", "synthetic", "--no-pretrained",
        "--weight-decay", "0.01", "--label-smoothing", "0.1", "--optimizer", "adamw", "--dry-run",
        "--out", tmp_path / "s",
    )  # fmt: skip
    assert code == 0, err
    assert "not a run option" not in err
