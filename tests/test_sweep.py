"""`tlbench sweep`: every cell in its own process, failures recorded, reruns skip finished cells."""

from __future__ import annotations

import json
import time
from pathlib import Path

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
    )
    assert code == 0, err
    assert "vgg11-keras-vgg19-f15-s0 will not run" in err and "0-14" in err  # vgg11 has 14 entries
    assert "test_resnet-keras-vgg19-f15-s1 will not run" in err
    assert "12 cell(s)" in err and not (tmp_path / "s").exists()


def test_the_default_folder_is_named_by_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.sweep import run_sweep

    monkeypatch.chdir(tmp_path)

    def folder(forwarded: list[str], seeds: list[int]) -> Path:
        out, _ = run_sweep(
            ["test_resnet"],
            ["all"],
            ["keras-vgg19"],
            seeds,
            forwarded,
            out=None,
            gpus=[],
            baselines=False,
            dry_run=True,
            progress=False,
        )
        return out

    same = folder(["--epochs", "1"], [0])
    assert same == folder(["--epochs", "1"], [0])  # the same command continues the same sweep
    assert same.parent == Path("results/sweeps")
    assert folder(["--epochs", "2"], [0]) != same and folder(["--epochs", "1"], [0, 1]) != same


def test_bad_forwarded_option(cli, tmp_path: Path) -> None:
    code, _, err = cli("sweep", "--backbones", "test_resnet", "--out", tmp_path / "s", "--epochz", "1")
    assert code == 2 and "--epochz" in err
    code, _, err = cli("sweep", "--backbones", "test_resnet", "--out", tmp_path / "s", "--seed", "1")
    assert code == 2 and "set by the sweep" in err


@pytest.mark.slow
def test_two_by_two_grid_finishes_and_a_rerun_skips_it(cli, tmp_path: Path) -> None:
    folder = tmp_path / "grid"
    args = [
        "sweep",
        "--backbones",
        "test_resnet,test_efficientnet",
        "--freeze",
        "none,all",
        "--out",
        folder,
        *COMMON,
    ]
    code, _, err = cli(*args)
    assert code == 0, err
    state = _state(folder)
    assert len(state) == 4 and {s["status"] for s in state.values()} == {"finished"}
    stamps = {c: (folder / "cells" / c / "summary.json").stat().st_mtime_ns for c in state}

    start = time.perf_counter()
    code, _, err = cli(*args)
    assert code == 0 and time.perf_counter() - start < 20, err  # nothing to run: no process started
    assert {c: (folder / "cells" / c / "summary.json").stat().st_mtime_ns for c in state} == stamps
    assert all(s["attempts"] == 1 for s in _state(folder).values())

    code, out, _ = cli("report", folder, "--format", "csv")
    assert code == 0 and len(out.strip().splitlines()) == 1 + 4  # header + one row per configuration
    code, _, err = cli(
        "report", folder, "--format", "html", "--out", tmp_path / "r.html", "--plots", tmp_path / "p"
    )
    assert code == 0 and "<table" in (tmp_path / "r.html").read_text()
    assert len(list((tmp_path / "p").glob("*.png"))) >= 3


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
    assert manifest["forwarded"] == [str(a) for a in COMMON] and len(manifest["cells"]) == 2
    summary = folder / "cells" / good / "summary.json"
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
    assert "vgg11-keras-vgg19-fall-s0" in err and "skipped" in err
