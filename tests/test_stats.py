"""tlbench.report.stats: intervals and paired tests on constructed predictions whose answer is known."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_report import write_predictions, write_run

from tlbench.report import stats
from tlbench.report.command import report

IMAGES = 400
LABELS = [i % 10 for i in range(IMAGES)]


def right_except(wrong: Sequence[int] | range = ()) -> list[bool]:
    """Right on every image but those listed."""
    bad = set(wrong)
    return [i not in bad for i in range(IMAGES)]


def one_run(root: Path, name: str, right: Sequence[bool], **options: Any) -> Path:
    """A finished run whose final top-1 is the share of `right`, with its predictions."""
    top1 = sum(right) / len(right)
    return write_predictions(write_run(root, name, val_top1=(top1 / 2, top1), **options), right)


def rows_by_freeze(root: Path) -> dict[str, dict[str, Any]]:
    df = report([root], "json", out=root.parent / f"{root.name}.json")
    assert df is not None
    return {row["freeze"]: row for row in json.loads((root.parent / f"{root.name}.json").read_text())}


# -- the exact binomial ----------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (0, 10), (3, 10), (5, 5), (40, 60), (500, 560), (7, 0)])
def test_mcnemar_is_the_exact_two_sided_binomial(b: int, c: int) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_by_hand_and_at_scale() -> None:
    assert stats.mcnemar_exact(0, 10) == 2 / 2**10  # both tails of the one all-one-way outcome
    assert stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(3, 10) == stats.mcnemar_exact(10, 3)
    start = time.perf_counter()
    assert stats.mcnemar_exact(25_000, 25_000) == 1.0  # 50,000 discordant images, still exact
    assert 0 < stats.mcnemar_exact(24_500, 25_500) < 0.01
    assert time.perf_counter() - start < 5


# -- compare: known answers ------------------------------------------------------------------------


def test_identical_models_tie() -> None:
    model = np.array(right_except(range(0, IMAGES, 4)))
    one_seed = stats.compare([[model], [model.copy()]])
    assert [s.verdict for s in one_seed] == ["best", "tied"]
    assert one_seed[1].test == stats.MCNEMAR and one_seed[1].p_value == 1.0 and one_seed[1].diff == 0
    seeds = stats.compare([[model, model], [model, model, model]])
    assert [s.verdict for s in seeds] == ["best", "tied"] and seeds[1].test == stats.BOOTSTRAP
    assert seeds[1].p_value == 1.0


def test_right_everywhere_beats_wrong_on_ten_percent() -> None:
    perfect, flawed = np.array(right_except()), np.array(right_except(range(0, IMAGES, 10)))
    one_seed = stats.compare([[flawed], [perfect]])
    assert one_seed[1].verdict == "best" and one_seed[0].verdict == "worse"
    assert one_seed[0].test == stats.MCNEMAR
    assert one_seed[0].p_value == pytest.approx(2 / 2**40)  # 40 images one way, none the other
    assert one_seed[0].diff == pytest.approx(-0.1)
    seeds = stats.compare([[perfect, perfect, perfect], [flawed, flawed]])
    assert seeds[1].verdict == "worse" and seeds[1].test == stats.BOOTSTRAP and seeds[1].p_value < 0.001


def test_the_interval_covers_the_accuracy_and_is_reproducible() -> None:
    rng = np.random.default_rng(7)
    runs = [rng.random(IMAGES) < 0.8 for _ in range(3)]
    first, again = stats.compare([runs]), stats.compare([runs])
    assert first == again  # fixed seed: the same report twice
    (s,) = first
    assert s.verdict == "" and math.isnan(s.diff)  # alone on its images: nothing to compare
    assert s.top1 == pytest.approx(np.mean([r.mean() for r in runs]))
    assert s.low < s.top1 < s.high
    # about 1.96 binomial standard errors each side, seed spread included
    se = math.sqrt(s.top1 * (1 - s.top1) / IMAGES)
    assert 2.5 * se < s.high - s.low < 6 * se


def test_a_small_difference_on_few_images_is_a_tie() -> None:
    a = np.array(right_except(range(0, IMAGES, 5)))  # 80 %
    b = a.copy()
    b[[1, 2]] = False  # 2 images fewer: 79.5 %
    result = stats.compare([[a], [b]])
    assert result[1].verdict == "tied" and result[1].p_value == 0.5  # McNemar: 2 vs 0 discordant


# -- through run directories ----------------------------------------------------------------------


def test_the_report_ties_identical_runs_and_separates_better_ones(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    flawed = right_except(range(0, IMAGES, 10))
    one_run(root, "perfect", right_except(), freeze="none")
    one_run(root, "copy-a", flawed, freeze="11")
    one_run(root, "copy-b", flawed, freeze="5")
    rows = rows_by_freeze(root)
    assert rows["none"]["vs_best"] == "best" and rows["none"]["vs_best_p"] is None
    for freeze in ("11", "5"):
        assert rows[freeze]["vs_best"] == "worse" and rows[freeze]["vs_best_test"] == stats.MCNEMAR
        assert rows[freeze]["vs_best_diff"] == pytest.approx(-0.1)
        assert rows[freeze]["vs_best_config"] == "vgg19 / freeze none"
    assert rows["11"]["final_top1_ci_low"] < 0.9 < rows["11"]["final_top1_ci_high"]

    markdown = tmp_path / "r.md"
    report([root], "markdown", out=markdown)
    text = markdown.read_text()
    assert "exact McNemar test" in text and "seed variance is unmeasured" in text
    assert "not significantly different at 5%" in text


def test_several_seeds_use_the_bootstrap_and_say_nothing_of_unmeasured_variance(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in range(3):
        one_run(root, f"a-s{seed}", right_except(range(seed, IMAGES, 7)), freeze="none", seed=seed)
        one_run(root, f"b-s{seed}", right_except(range(seed, IMAGES, 7)), freeze="all", seed=seed)
    rows = rows_by_freeze(root)
    verdicts = sorted(r["vs_best"] for r in rows.values())
    assert verdicts == ["best", "tied"]
    tied = next(r for r in rows.values() if r["vs_best"] == "tied")
    assert tied["vs_best_test"] == stats.BOOTSTRAP and tied["vs_best_p"] == 1.0
    markdown = tmp_path / "r.md"
    report([root], "markdown", out=markdown)
    assert "seed variance is unmeasured" not in markdown.read_text()
    assert stats.BOOTSTRAP in markdown.read_text()


def test_only_runs_on_the_same_images_are_compared(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    one_run(root, "real", right_except(), freeze="none")
    one_run(root, "synthetic", right_except(range(0, IMAGES, 2)), freeze="all", data="synthetic")
    shuffled = write_run(root, "other-split", freeze="11", val_top1=(0.5,))
    write_predictions(shuffled, right_except(), labels=list(reversed(LABELS)))
    rows = rows_by_freeze(root)
    assert all(r["vs_best"] is None and r["stats_note"] is None for r in rows.values())  # each alone
    assert all(r["final_top1_ci_low"] is not None for r in rows.values())


def test_a_run_without_predictions_gets_no_interval_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    one_run(root, "with", right_except(), freeze="none")
    write_run(root, "without", freeze="all")
    rows = rows_by_freeze(root)
    assert rows["all"]["final_top1_ci_low"] is None and "predictions.csv" in rows["all"]["stats_note"]
    assert rows["none"]["vs_best"] is None  # nothing to compare it with
    markdown = tmp_path / "r.md"
    report([root], "markdown", out=markdown)
    assert f"freeze all / 3 epochs: no interval: no predictions.csv in {root / 'without'}" in (
        markdown.read_text().replace("\\", "")
    )


def test_seeds_scored_on_different_images_are_not_pooled(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    one_run(root, "s0", right_except(), freeze="none")
    run = write_run(root, "s1", freeze="none", seed=1, val_top1=(0.5, 1.0))
    write_predictions(run, right_except(), labels=list(reversed(LABELS)))
    rows = rows_by_freeze(root)
    assert rows["none"]["stats_note"] == "no interval: its seeds were scored on different images"


@pytest.mark.parametrize(
    ("edit", "rows"),
    [
        ("keep-some", 300),  # only the right ones kept: an interval of 1.0-1.0 next to a top-1 of 0.75
        ("too-many", 401),
        ("shuffled-ids", 400),
    ],
)
def test_predictions_that_do_not_match_the_validation_images_are_refused_for_that_run(
    tmp_path: Path, edit: str, rows: int
) -> None:
    root = tmp_path / "runs"
    one_run(root, "good", right_except(range(0, IMAGES, 3)), freeze="none")
    bad = one_run(root, "bad", right_except(range(0, IMAGES, 4)), freeze="all")
    path = bad / "predictions.csv"
    header, *lines = path.read_text().splitlines()
    if edit == "keep-some":
        lines = [line for line in lines if line.split(",")[1] == line.split(",")[2]]
    elif edit == "too-many":
        lines = [*lines, f"{IMAGES},0,0"]
    else:
        lines[0], lines[1] = lines[1], lines[0]
    path.write_text("\n".join([header, *lines]) + "\n")
    rows_ = rows_by_freeze(root)
    note = rows_["all"]["stats_note"]
    assert rows_["all"]["final_top1_ci_low"] is None and rows_["all"]["vs_best"] is None
    assert note.startswith(f"no interval: {path} does not match the run's {IMAGES} validation images")
    assert f"({rows} rows" in note
    assert rows_["none"]["final_top1_ci_low"] is not None and rows_["none"]["stats_note"] is None
    markdown = tmp_path / "r.md"
    report([root], "markdown", out=markdown)
    assert "does not match the run's 400 validation images" in markdown.read_text().replace("\\", "")
