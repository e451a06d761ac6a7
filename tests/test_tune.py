"""`tlbench sweep --tune`: the same tuning budget for every configuration, trials as run directories
scored on the selection split, the studies in SQLite, then the final runs with the best values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tlbench.report.tuning import best_so_far, number_text
from tlbench.rundir import Prediction, RunDir

DATA = "synthetic:4x24@32"  # 20 training and 4 validation images per class
GRID = ["--backbones", "test_resnet", "--freeze", "none", "--recipes", "keras-vgg19", "--no-baseline"]
FAST = ["--data", DATA, "--image-size", "32", "--no-pretrained", "--device", "cpu", "--amp", "off"]
STUDY = "test_resnet-keras-vgg19-fnone"


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_the_tuning_history_is_the_best_so_far_and_values_are_short() -> None:
    history = [(0, 0.25), (1, None), (2, 0.5), (3, 0.375), (4, None)]  # None: pruned or failed
    assert best_so_far(history) == ([1, 2, 3, 4, 5], [0.25, 0.25, 0.5, 0.5, 0.5])
    trials, best = best_so_far([(1, 0.5), (0, None)])  # in trial order, nothing before the first value
    assert trials == [1, 2] and best[0] != best[0] and best[1] == 0.5
    assert [number_text(v) for v in (3.2e-4, 1e-3, 0.05, 0.0, 1.5)] == ["3.2e-4", "1e-3", "0.05", "0", "1.5"]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--tune", "lr", "--select", "none"], "--tune decide on a selection split, and --select is none"),
        (["--tune", "colour"], "--tune 'colour' is not a tunable value"),
        (["--tune", "lr", "--space", "lr=1e-2:1e-5"], "--space 'lr=1e-2:1e-5' needs LO < HI"),
        (["--tune", "lr", "--space", "lr=0:1e-2:log"], "needs LO < HI (and LO > 0 on a log scale)"),
        (["--tune", "lr", "--space", "lr=1e-5:20"], "--space 'lr=1e-5:20': lr 20 must be in (0, 10]"),
        (["--tune", "lr", "--trials", "0"], "--trials 0 must be at least 1"),
        (["--trials", "4"], "--trials is for --tune"),
        (["--race-p", "0.05"], "--race-p is for --race"),
        (["--race", "--select", "none"], "--race decide on a selection split"),
    ],
)
def test_bad_tuning_options_are_one_line(cli, tmp_path: Path, args: list[str], problem: str) -> None:
    out = tmp_path / "sw"
    code, _, err = cli("sweep", *GRID, *FAST, "--epochs", "1", *args, "--out", out)
    assert code == 2 and problem in err, err
    assert "Traceback" not in err and not out.exists()


def test_a_tuned_sweep(cli, tmp_path: Path) -> None:
    """The done-when command, smaller: every trial a run directory scored on the selection split,
    the study in tune.db, the final run with the best trial's values, the report's `tuned`."""
    import optuna

    out = tmp_path / "sw"
    tune = ["--tune", "lr", "--trials", "3", "--tune-epochs", "1", "--select", "25%", "--epochs", "1"]
    code, _, err = cli("sweep", *GRID, *FAST, *tune, "--out", out)
    assert code == 0, err

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'tune.db'}")
    assert len(study.trials) == 3 and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    for k in range(3):
        trial = _json(out / "trials" / f"{STUDY}-t{k}" / "config.json")
        assert trial["config"]["trial"] == f"{STUDY}#t{k}" and trial["config"]["recipe"]["epochs"] == 1
        assert trial["resolved"]["selection"]["spec"] == "25%"  # trained without the selection images
        assert (out / "trials" / f"{STUDY}-t{k}" / "select_predictions.csv").is_file()

    record = _json(out / "tuning.json")["studies"][STUDY]
    assert record["counts"]["COMPLETE"] + record["counts"]["PRUNED"] == 3 and record["device_seconds"] > 0
    best = record["best"]["params"]["lr"]
    final = _json(out / "cells" / f"{STUDY}-s0" / "config.json")["config"]
    assert final["recipe"]["lr"] == best and final["trial"] is None
    assert final["select"] == "none"  # --refit: the final run trains on the selection images too

    code, report, err = cli("report", out, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(report)  # the trials are no rows
    assert row["tuned"] == {"lr": best}
    assert row["tuning"]["trials"] == 3 and row["tuning"]["device_seconds"] == record["device_seconds"]
    assert len(row["tuning"]["history"]) == 3 and row["race"] is None

    page, plots = tmp_path / "report.html", tmp_path / "plots"
    code, _, err = cli("report", out, "--format", "html", "--out", page, "--plots", plots)
    assert code == 0, err
    assert (plots / "tuning_history.png").read_bytes().startswith(b"\x89PNG")  # beside the others
    html = page.read_text()
    tuning = html[html.index("<h2 id='tuning'>") : html.index("<h2 id='configurations'>")]
    assert f"lr {number_text(best)} (3 trials)" in tuning and "tuning history" in tuning
    assert f"3 ({record['counts']['COMPLETE']}, {record['counts']['PRUNED']}, 0)" in tuning
    assert str(record["device_seconds"]) in tuning and "data:image/png;base64," in tuning


def test_a_killed_sweep_resumes_its_study(cli, tmp_path: Path) -> None:
    """SIGTERM of the sweep while it tunes: the rerun keeps the finished trials (not trained again),
    retries the interrupted one, and ends with the same budget of trials."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sw"
    tune = ["--tune", "lr", "--trials", "3", "--tune-epochs", "2", "--select", "25%", "--epochs", "1"]
    args = ["sweep", *GRID, *FAST, *tune, "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "tlbench", *args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        record = _json(out / "tuning.json") if (out / "tuning.json").is_file() else {"studies": {}}
        history = record["studies"].get(STUDY, {}).get("history", [])
        if any(t["state"] in ("COMPLETE", "PRUNED") for t in history):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    before = [t for t in _json(out / "tuning.json")["studies"][STUDY]["history"] if t["state"] != "RUNNING"]
    assert before and len(before) < 3  # killed in the middle of its study
    first = out / "trials" / f"{STUDY}-t0" / "summary.json"
    stamp = first.stat().st_mtime_ns

    code, _, err = cli("sweep", *args[1:])
    assert code == 0, err
    record = _json(out / "tuning.json")["studies"][STUDY]
    counted = [t for t in record["history"] if not t["interrupted"]]
    assert len(counted) == 3 and {t["state"] for t in counted} <= {"COMPLETE", "PRUNED"}
    kept = {t["number"]: t for t in record["history"]}
    for t in before:  # the finished trials kept as they were, and not trained again
        assert kept[t["number"]]["state"] == t["state"] and kept[t["number"]]["params"] == t["params"]
    assert first.stat().st_mtime_ns == stamp
    assert sorted(t["slot"] for t in counted) == [0, 1, 2]


@pytest.mark.parametrize(
    ("section", "field", "words"),
    [
        ('search:\n  lr: "1e-2:1e-5"\n', "search.lr", "needs LO < HI"),
        ('search:\n  colour: "0:1"\n', "search.colour", "'colour' is not a tunable value"),
        ("search:\n  lr: 0.1\n", "search.lr", "0.1 is not text LO:HI[:log|linear]"),
        ("search: [lr]\n", "search", "is not a mapping"),
    ],
)
def test_a_bad_search_section_names_the_file_and_the_field(
    cli, tmp_path: Path, section: str, field: str, words: str
) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("optimizer: sgd\n" + section)
    out = tmp_path / "sw"
    grid = ["--backbones", "test_resnet", "--freeze", "none", "--recipes", recipe, "--no-baseline"]
    code, _, err = cli("sweep", *grid, *FAST, "--epochs", "1", "--tune", "lr", "--out", out)
    assert code == 2 and f"recipe file {recipe}: {field} " in err and words in err, err
    assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err  # the error and its hint


def test_a_recipe_files_search_section_reaches_its_study(cli, tmp_path: Path) -> None:
    """`search:` in a recipe file is the study's space; `--space` on the command line wins."""
    import optuna

    recipe = tmp_path / "mine.yaml"
    recipe.write_text('optimizer: sgd\nsearch:\n  lr: "1e-3:1e-2:log"\n  dropout: "0.1:0.2:linear"\n')
    out = tmp_path / "sw"
    grid = ["--backbones", "test_resnet", "--freeze", "none", "--recipes", recipe, "--no-baseline"]
    tune = ["--tune", "lr,dropout", "--trials", "1", "--epochs", "1", "--select", "25%"]
    code, _, err = cli("sweep", *grid, *FAST, *tune, "--space", "dropout=0:0.4:linear", "--out", out)
    assert code == 0, err
    ((key, record),) = _json(out / "tuning.json")["studies"].items()  # the cell id holds the file's path
    study = optuna.load_study(study_name=key, storage=f"sqlite:///{out / 'tune.db'}")
    (trial,) = study.trials
    lr, dropout = trial.distributions["lr"], trial.distributions["dropout"]
    assert (lr.low, lr.high, lr.log) == (1e-3, 1e-2, True)  # the file's
    assert (dropout.low, dropout.high, dropout.log) == (0.0, 0.4, False)  # --space's, over the file's
    assert record["space"] == {"lr": "lr=0.001:0.01:log", "dropout": "dropout=0:0.4:linear"}


# Issue 18: tuning must find something. keras-vgg19's SGD lr 1e-4 (momentum 0.9) is far too small for
# test_resnet from scratch: one epoch of 50 steps (800 images, batch 16, cosine to 0) leaves it at
# chance (0.23-0.31 validation top-1 of 4 classes over seeds 0-7), where lr ~1e-2 reaches 0.64-0.78.
# The cosine schedule lands the high lr's one epoch softly: at a constant lr the last steps made its
# validation top-1 swing between 0.39 and 0.74. The study's sampler is seeded by its configuration
# (`tlbench.sweep.tune`), so it draws the same lrs every time: 1.4e-4, 1.7e-2, 1.2e-2. A trial is not
# pruned at its last epoch (that would save nothing), so all three complete and the best selection
# top-1 wins: 0.59-0.70 for 1.7e-2 against 0.21-0.29 for 1.4e-4 over seeds 0-7.
TOO_SMALL = [
    *["--data", "synthetic:4x240@32", "--image-size", "32", "--no-pretrained", "--device", "cpu"],
    *["--amp", "off", "--aug", "none", "--batch-size", "16", "--epochs", "1", "--schedule", "cosine"],
]  # 200 training and 40 validation images per class; the sweep selects on 25 % of the training ones


def _top1(predictions: list[Prediction]) -> float:
    return sum(p.label == p.predicted for p in predictions) / len(predictions)


def _tuned_and_untuned(cli, tmp_path: Path, seed: int) -> tuple[float, float, float]:
    """(tuned top-1, untuned top-1, the tuned lr) on the same validation images: a sweep that tunes
    lr over 1e-4..1e-1 (3 trials of one epoch) then refits, and the same run with the recipe's lr."""
    out, run = tmp_path / "sw", tmp_path / "run"
    grid = ["--backbones", "test_resnet", "--freeze", "none", "--recipes", "keras-vgg19", "--no-baseline"]
    tune = ["--tune", "lr", "--space", "lr=1e-4:1e-1:log", "--trials", "3", "--tune-epochs", "1"]
    split = ["--split-seed", seed]
    code, _, err = cli(
        "sweep", *grid, "--seeds", seed, *TOO_SMALL, *split, "--select", "25%", *tune, "--out", out
    )
    assert code == 0, err
    run_args = ["test_resnet", "--freeze", "none", "--seed", seed, *TOO_SMALL, *split, "--select", "none"]
    code, _, err = cli("run", *run_args, "--out", run)
    assert code == 0, err
    tuned_dir = out / "cells" / f"{STUDY}-s{seed}"
    tuned, untuned = _json(tuned_dir / "config.json")["config"], _json(run / "config.json")["config"]
    lr = tuned["recipe"].pop("lr")
    assert untuned["recipe"].pop("lr") == 1e-4 and tuned["recipe"] == untuned["recipe"]  # lr alone differs
    assert tuned["select"] == untuned["select"] == "none"  # both train on every training image
    tuned_val, untuned_val = RunDir(tuned_dir).read_predictions(), RunDir(run).read_predictions()
    assert [p.label for p in tuned_val] == [p.label for p in untuned_val] and len(tuned_val) == 160
    return _top1(tuned_val), _top1(untuned_val), lr


@pytest.mark.slow  # 13-18 s on a shared 2-core CPU: a tuned sweep (3 trials, a refit) and a run
def test_tuning_the_lr_beats_a_recipe_lr_far_too_small(cli, tmp_path: Path) -> None:
    """Seeds 0-7 (`_tuned_and_untuned(cli, tmp_path, seed)`) measured margins of 36-52 points."""
    tuned, untuned, lr = _tuned_and_untuned(cli, tmp_path, seed=0)
    assert lr >= 50 * 1e-4, lr  # far above the recipe's 1e-4 (the draws: 1.7e-2 and 1.2e-2)
    assert tuned - untuned >= 0.20, (tuned, untuned, lr)
