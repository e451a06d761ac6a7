"""`--select`: a seeded per-class selection split held out of the training split, evaluated every epoch,
recorded in config.json, and the split the best epoch is chosen on."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

DATA = "synthetic:4x24@32"  # 20 training and 4 validation images per class
FAST = ["--data", DATA, "--image-size", "32", "--no-pretrained", "--device", "cpu", "--amp", "off", "-q"]


def _tiny(out: Path, **overrides: Any) -> Any:
    from tlbench.config import run_config

    options = {"freeze": "none", "data": DATA, "image_size": 32, "pretrained": False, "device": "cpu"}
    options |= {"amp": "off", "epochs": 2, "lr": 0.01}
    return run_config("test_resnet", "keras-vgg19", out=out, **(options | overrides))


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_the_selection_split_is_per_class_seeded_and_apart_from_validation() -> None:
    from tlbench.config.run import parse_select
    from tlbench.data.dataset import hold_out_selection, load_data
    from tlbench.errors import ConfigError

    data = load_data(DATA, 32, progress=False)

    def held(spec: str, seed: int = 0) -> Any:
        return hold_out_selection(data, parse_select(spec), spec, seed)

    part = held("25%")
    select, train, val = (set(s.indices.tolist()) for s in (part.select, part.train, part.val))
    assert not select & val and not select & train  # disjoint by check, not only by construction
    assert select | train == set(data.train.indices.tolist()) and part.val is data.val
    assert np.bincount(part.select.labels).tolist() == [5, 5, 5, 5]  # 25 % of 20 per class
    record = part.selection
    assert record["images"] == 20 and record["train_images"] == 60
    assert record["per_class"] == dict.fromkeys(data.classes, 5)
    assert held("25%").selection["fingerprint"] == record["fingerprint"]  # the same seed, the same images
    assert held("25%", seed=1).selection["fingerprint"] != record["fingerprint"]
    assert np.bincount(held("3").select.labels).tolist() == [3, 3, 3, 3]
    assert hold_out_selection(data, None, "none", 0) is data
    with pytest.raises(ConfigError, match=r"select 20 is more than class .* can spare"):
        held("20")


@pytest.mark.parametrize(
    ("spec", "written"), [("none", "none"), ("10 %", "10%"), ("12.5%", "12.5%"), ("5", "5"), ("NONE", "none")]
)
def test_select_specs_have_one_written_form(spec: str, written: str) -> None:
    assert _tiny(None, select=spec).select == written


def test_bad_select_is_one_line_and_writes_nothing(cli, tmp_path: Path) -> None:
    for spec, problem in (
        ("150%", "--select 150% must be above 0% and below 100%"),
        ("-3", "--select -3 must be at least 1 image per class"),
        ("ten", "--select 'ten' is not P%, N or none"),
        ("20", "--select 20 is more than class"),  # found once the data is read: 20 training images each
    ):
        out = tmp_path / spec
        code, _, err = cli("run", "test_resnet", "--freeze", "none", *FAST, "--select", spec, "--out", out)
        assert code == 2 and problem in err, err
        assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err  # the error and its hint
        assert not out.exists()


def test_best_epoch_follows_the_selection_split() -> None:
    from tlbench.rundir import EpochMetrics
    from tlbench.train.trainer import Trainer

    def row(epoch: int, val: float, select: float | None, select_loss: float | None = 1.0) -> EpochMetrics:
        return EpochMetrics(epoch, 1.0, 0.5, 1.0, val, 1.0, 0.01, 1.0, 1.0, 0.1, None, select_loss, select)

    trainer = Trainer(_tiny(None, select="25%"))
    trainer.resolved = SimpleNamespace(selection={"images": 20})  # type: ignore[assignment]
    trainer.history = [row(1, 0.50, 0.40), row(2, 0.90, 0.30), row(3, 0.60, 0.40, 0.8)]
    best = trainer.best_epoch()
    assert best is not None and best.epoch == 3  # not epoch 2, the best on validation; ties: lower loss
    trainer.resolved = SimpleNamespace(selection=None)  # type: ignore[assignment]
    trainer.history = [row(1, 0.50, None, None), row(2, 0.90, None, None)]
    assert trainer.best_epoch().epoch == 2  # type: ignore[union-attr]


def test_a_run_with_a_selection_split(cli, tmp_path: Path) -> None:
    from tlbench.report import aggregate, collect_runs, render
    from tlbench.train.trainer import Trainer

    trainer = Trainer(_tiny(tmp_path / "run", select="25%"), progress=False)
    with trainer.stop:
        trainer.set_up()
        used = set(trainer.inputs.train.indices.tolist())  # the images the run actually trains on
        select = set(trainer.data.select.indices.tolist())
        assert not used & select and not select & set(trainer.data.val.indices.tolist())
        assert len(used) == 60 and len(select) == 20
        trainer.restore()
        run = trainer.finish(trainer.fit())
    trainer.release()

    selection = _json(run / "config.json")["resolved"]["selection"]
    assert selection["spec"] == "25%" and selection["images"] == 20 and len(selection["fingerprint"]) == 16
    assert _json(run / "config.json")["config"]["select"] == "25%"
    rows = _metrics(run)
    assert len(rows) == 2 and all(r["select_top1"] != "" and r["select_loss"] != "" for r in rows)
    summary = _json(run / "summary.json")
    assert summary["best_chosen_on"] == "select" and summary["select_images"] == 20
    key = [(float(r["select_top1"]), -float(r["select_loss"])) for r in rows]
    best = rows[max(range(len(rows)), key=lambda i: key[i])]
    assert summary["best_epoch"] == int(best["epoch"])
    assert summary["best_val_top1"] == pytest.approx(float(best["val_top1"]), abs=1e-6)  # validation, there
    assert summary["best_select_top1"] == pytest.approx(float(best["select_top1"]), abs=1e-6)

    records, _ = collect_runs([run])
    df = aggregate(records)
    (row,) = json.loads(render(df, "json"))
    assert row["best_chosen_on"] == "select" and row["select_images"] == 20 and row["select"] == "25%"
    assert "best: epoch chosen on the selection split (20 images" in render(df, "markdown")


def test_a_run_dir_from_before_select_resumes_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlbench.errors import Interrupted
    from tlbench.report import aggregate, collect_runs, render
    from tlbench.train.api import resume_config
    from tlbench.train.progress import Ticker
    from tlbench.train.trainer import train

    real = Ticker.epoch_done

    def interrupt(self: Any, row: Any) -> None:
        real(self, row)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Ticker, "epoch_done", interrupt)
    run = tmp_path / "old"
    with pytest.raises(Interrupted):
        train(_tiny(run), progress=False)
    monkeypatch.setattr(Ticker, "epoch_done", real)

    # What a tlbench before --select wrote: no select field, no selection record, no select columns.
    doc = _json(run / "config.json")
    del doc["config"]["select"], doc["resolved"]["selection"]
    (run / "config.json").write_text(json.dumps(doc))

    def strip_metrics() -> None:
        lines = (run / "metrics.csv").read_text().splitlines()
        (run / "metrics.csv").write_text("".join(",".join(x.split(",")[:-2]) + "\n" for x in lines))

    strip_metrics()
    assert resume_config(run).select == "none"
    done = train(resume_config(run), resume=run, progress=False)
    strip_metrics()
    summary = _json(done / "summary.json")
    assert summary["epochs"] == 2 and summary["best_chosen_on"] == "val"
    for name in ("best_chosen_on", "best_select_top1", "select_images"):
        del summary[name]
    (done / "summary.json").write_text(json.dumps(summary))

    records, skipped = collect_runs([done])
    assert skipped == [] and records[0].best_chosen_on == "val" and records[0].select == "none"
    assert len(records[0].curves["val_top1"]) == 2
    df = aggregate(records)
    assert json.loads(render(df, "json"))[0]["best_chosen_on"] == "val"
    assert "best: chosen on validation (optimistic" in render(df, "markdown")
