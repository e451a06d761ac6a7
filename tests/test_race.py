"""`tlbench sweep --race`: a cell significantly behind the leader on the same selection images
(paired exact McNemar) is stopped early with its reason; the others and the leader go on."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tlbench._sweepdir import CellState


def _epoch(run_dir: Path, epochs: int, labels: list[int], predicted: list[int]) -> None:
    from tlbench.rundir import EpochMetrics, Prediction, RunDir

    rd = RunDir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    top1 = sum(a == b for a, b in zip(labels, predicted, strict=True)) / len(labels)
    rows = [
        EpochMetrics(e, 1.0, 0.5, 1.0, 0.5, 1.0, 0.01, 1.0, 1.0, 0.1, None, 1.0, top1)
        for e in range(1, epochs + 1)
    ]
    rd.write_metrics(rows)
    rd.write_select_predictions(
        Prediction(i, y, p) for i, (y, p) in enumerate(zip(labels, predicted, strict=True))
    )


def test_mcnemar_behind_is_the_exact_one_sided_tail() -> None:
    from tlbench.report.stats import mcnemar_behind

    assert mcnemar_behind(0, 0) == 1.0
    assert mcnemar_behind(10, 0) == 1 / 1024  # ten discordant images, all the leader's
    assert abs(mcnemar_behind(9, 2) - 67 / 2048) < 1e-12
    assert mcnemar_behind(2, 9) > 0.99


def test_a_race_stops_the_hopeless_cell_and_keeps_the_leader(tmp_path: Path) -> None:
    from tlbench.config.tuning import RaceOptions
    from tlbench.rundir import RunDir
    from tlbench.sweep.grid import Cell
    from tlbench.sweep.race import Race

    cells = [
        Cell("good", "run", "vgg19", "timm-ft", "11", 0),
        Cell("close", "run", "resnet50", "timm-ft", "none", 0),
        Cell("hopeless", "run", "resnet50", "keras-vgg19", "all", 0),
        Cell("young", "run", "vgg11", "keras-vgg19", "all", 0),
    ]
    labels = [i % 4 for i in range(40)]
    _epoch(tmp_path / "good", 4, labels, [*labels[:36], 0, 0, 0, 0])  # 37/40 (one of the four is right)
    _epoch(tmp_path / "close", 4, labels, [*labels[:34], 1, 1, 1, 1, 1, 1])  # 35/40: behind, not clearly
    _epoch(tmp_path / "hopeless", 4, labels, [0] * 40)  # 10/40
    _epoch(tmp_path / "young", 1, labels, [0] * 40)  # hopeless too, but before --race-after
    states = {c.id: CellState("running") for c in cells} | {"good": CellState("finished")}
    sweep = SimpleNamespace(
        cells=cells, states=states, cell_dir=lambda c: tmp_path / c.id, save_state=lambda: None
    )
    race = Race(RaceOptions(race=True, race_after=2, race_p=0.01))
    race.check(sweep, cells[1:])

    assert set(race.stopped) == {"hopeless"}
    why = RunDir(tmp_path / "hopeless").stop_requested()
    assert (
        why is not None
        and why.startswith("behind timm-ft/vgg19 f11 by 67.5 pts, p=")
        and why.endswith("at epoch 4")
    )
    assert states["hopeless"].note == why
    for cid in ("good", "close", "young"):
        assert RunDir(tmp_path / cid).stop_requested() is None


def test_a_race_judges_a_young_cell_against_its_rivals_at_the_same_epoch(tmp_path: Path) -> None:
    """Cells run one after another: a cell after its 2nd epoch is not judged against another's 4th.
    Only what the race saw of the rival at epoch <= 2 is its yardstick."""
    from tlbench.config.tuning import RaceOptions
    from tlbench.rundir import RunDir
    from tlbench.sweep.grid import Cell
    from tlbench.sweep.race import Race

    first, late = (
        Cell("first", "run", "vgg19", "timm-ft", "11", 0),
        Cell("late", "run", "vgg11", "timm-ft", "all", 0),
    )
    labels = [i % 4 for i in range(40)]
    states = {"first": CellState("finished"), "late": CellState("running")}
    sweep = SimpleNamespace(
        cells=[first, late], states=states, cell_dir=lambda c: tmp_path / c.id, save_state=lambda: None
    )
    _epoch(tmp_path / "first", 4, labels, labels)  # 40/40 after 4 epochs, finished
    _epoch(tmp_path / "late", 2, labels, [*labels[:20], *[(y + 1) % 4 for y in labels[20:]]])  # 20/40 after 2
    race = Race(RaceOptions(race=True, race_after=1, race_p=0.01))
    race.check(sweep, [late])
    assert race.stopped == {} and RunDir(tmp_path / "late").stop_requested() is None

    # the same, where the race had seen the first cell at its 2nd epoch (39/40) while it ran
    race = Race(RaceOptions(race=True, race_after=1, race_p=0.01))
    _epoch(tmp_path / "first", 2, labels, [*labels[:39], (labels[39] + 1) % 4])
    states["first"] = CellState("running")
    race.check(sweep, [first])
    _epoch(tmp_path / "first", 4, labels, labels)
    states["first"] = CellState("finished")
    race._last = 0.0
    race.check(sweep, [late])
    assert race.stopped["late"].startswith("behind timm-ft/vgg19 f11 by 47.5 pts, p=")
    assert race.stopped["late"].endswith("at epoch 2")


def test_a_stopped_cell_is_a_row_of_its_own_with_its_race(tmp_path: Path) -> None:
    """The report: a raced sweep's rows carry `race`, the stopped cell's with why and when."""
    from tlbench.report.tuning import _race

    stopped = SimpleNamespace(
        status="stopped_early",
        epochs_done=3,
        epochs=10,
        device_seconds=6.0,
        wall_seconds=7.0,
        stop_reason="behind x by 50.0 pts",
        path=tmp_path,
    )
    assert _race([stopped], None) == {  # type: ignore[arg-type]
        "stopped": True,
        "epoch": 3,
        "reason": "behind x by 50.0 pts",
        "saved_device_seconds": 14.0,  # 7 epochs not run x 2 device-seconds per epoch
    }


def test_a_raced_sweep_stops_a_cell_and_reports_why(cli, tmp_path: Path, monkeypatch) -> None:
    """End to end, with the verdict fixed (the statistics are tested above): the cell behind stops
    at an epoch boundary with status stopped_early, the sweep records `stopped early` and why, and
    the report shows it as a row of its own with its `race`; the leader finishes."""
    import dataclasses

    import tlbench.sweep.race as race

    real = race.runner

    def seed_1_behind(cell, run_dir):  # the leader is seed 0, whatever the images say
        r = real(cell, run_dir)
        return r and dataclasses.replace(r, top1=0.1 if cell.seed == 1 else 0.9)

    monkeypatch.setattr(race, "runner", seed_1_behind)
    monkeypatch.setattr(
        race,
        "behind",
        lambda leader, other, p: f"behind {leader.label} by 80.0 pts, p=0.001 at epoch {other.epoch}",
    )
    out = tmp_path / "sw"
    grid = ["--backbones", "test_resnet", "--freeze", "none", "--seeds", "0,1", "--no-baseline"]
    fast = [
        "--data",
        "synthetic:4x24@32",
        "--image-size",
        "32",
        "--no-pretrained",
        "--device",
        "cpu",
        "--amp",
        "off",
    ]
    code, _, err = cli(
        "sweep",
        *grid,
        *fast,
        "--epochs",
        "20",
        "--select",
        "25%",
        "--race",
        "--race-after",
        "1",
        "--out",
        out,
    )
    assert code == 0, err
    states = json.loads((out / "state.json").read_text())
    leader, behind = states["test_resnet-keras-vgg19-fnone-s0"], states["test_resnet-keras-vgg19-fnone-s1"]
    assert leader["status"] == "finished"
    assert behind["status"] == "stopped early" and behind["note"].startswith(
        "behind keras-vgg19/test_resnet fnone by 80.0 pts"
    )
    summary = json.loads((out / "cells" / "test_resnet-keras-vgg19-fnone-s1" / "summary.json").read_text())
    assert (
        summary["status"] == "stopped_early"
        and summary["epochs"] < 20
        and summary["stop_reason"] == behind["note"]
    )

    code, report, err = cli("report", out, "--format", "json")
    assert code == 0, err
    rows = json.loads(report)
    assert [r["race"]["stopped"] for r in rows] == [False, True] and [r["n"] for r in rows] == [1, 1]
    saved = rows[1]["race"].pop("saved_device_seconds")
    assert rows[1]["race"] == {"stopped": True, "epoch": summary["epochs"], "reason": behind["note"]}
    per_epoch = summary["device_seconds"] / summary["epochs"]
    assert saved == pytest.approx((20 - summary["epochs"]) * per_epoch, abs=1e-2) and saved > 0
    assert rows[0]["race"]["saved_device_seconds"] == 0.0

    code, table, err = cli("report", out, "--format", "markdown")
    assert code == 0 and "1 of 2 configuration(s) stopped early" in table and "device-seconds" in table
