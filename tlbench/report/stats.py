"""Honest differences: a 95 % interval for each configuration's top-1, and a paired test of each
configuration against the best one on the same validation images.

Both read predictions.csv (the final model's top-1 class per validation image, in split order), so
they are about the *final* top-1, not the best epoch's (which was picked on these same images).

- The interval: a percentile bootstrap over the validation images (`RESAMPLES` resamples, seed
  `SEED`, so a report is reproducible); with several seeds each resample also draws the seeds with
  replacement, so it covers training randomness too. With one seed it covers only which images
  were drawn: seed variance is unmeasured.
- The comparison, within the configurations scored on the same images (same data, class list and
  labels in the same order): against the most accurate one, the exact McNemar test when both have
  one seed (a two-sided binomial test on the images exactly one of the two gets right), else a
  paired bootstrap over images and seeds (the same image resamples for both, seeds drawn within
  each). A difference with p >= `ALPHA` is reported as tied with the best.

numpy loads inside the functions; scipy is not needed (the binomial is exact, with `math.comb`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlbench.report.aggregate import DIFFERENCE_COLUMNS, row_runs
from tlbench.report.labels import row_labels
from tlbench.rundir import PREDICTIONS, RunDir, SchemaError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from tlbench.report.collect import RunRecord

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
ALPHA = 0.05

MCNEMAR = "exact McNemar test"
BOOTSTRAP = "paired bootstrap over images and seeds"

BEST, TIED, WORSE = "best", "tied", "worse"

COLUMNS = DIFFERENCE_COLUMNS
"""What `with_differences` adds to the aggregated table (accuracies and differences as fractions):
the 95 % interval of the final top-1; `best`, `tied` or `worse` against the most accurate
configuration on the same images (None when alone on its images or not computable: `stats_note`
says why); this minus the best; the p-value and the test; the best configuration's row label."""


@dataclass(frozen=True)
class ConfigStats:
    """One configuration's interval and its comparison with the best on the same images.

    Attributes:
        top1: The final top-1 on these images, mean over seeds (a fraction).
        low: The lower end of the 95 % interval.
        high: The upper end.
        verdict: `BEST`, `TIED` or `WORSE`; "" when it is the only configuration on its images.
        diff: top1 minus the best's top1 (0 for the best; NaN when alone).
        p_value: Of the paired test against the best (NaN for the best, or when alone).
        test: `MCNEMAR` or `BOOTSTRAP` ("" for the best, or when alone).
        best: The position of the best configuration in the input.
    """

    top1: float
    low: float
    high: float
    verdict: str
    diff: float
    p_value: float
    test: str
    best: int


def mcnemar_exact(b: int, c: int) -> float:
    """The two-sided exact McNemar p-value: a binomial test of b successes in b + c at 1/2.

    Args:
        b: Images the first model gets right and the second wrong.
        c: Images the second gets right and the first wrong.

    Returns:
        min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2); 1 when b + c == 0.
    """
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    term = math.comb(n, k)
    tail = term
    for i in range(k, 0, -1):  # C(n, i-1) = C(n, i) i / (n - i + 1), exactly; the terms shrink
        term = term * i // (n - i + 1)
        tail += term
        if term * i < tail >> 60:  # what is left (< i terms, each < term) cannot move a double
            break
    return min(1.0, 2 * tail / 2**n)


def mcnemar_behind(b: int, c: int) -> float:
    """The one-sided exact McNemar p-value that the second model is behind the first.

    Args:
        b: Images the first model (the leader) gets right and the second wrong.
        c: Images the second gets right and the first wrong.

    Returns:
        P(X >= b), X ~ Binomial(b + c, 1/2): how likely a lead this large is between two models
        that are equally good on these images; 1 when b + c == 0.
    """
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) for i in range(b, n + 1)) / 2**n)


def image_resamples(correct: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Each run's accuracy on bootstrap resamples of the images, the same resamples for every run.

    Args:
        correct: (runs, images) booleans: run r got image i right.
        resamples: How many resamples.
        seed: Of the generator that draws them.

    Returns:
        (resamples, runs) accuracies as fractions.
    """
    import numpy as np

    runs, n = correct.shape
    rng = np.random.default_rng(seed)
    weights = correct.T.astype(np.float64)
    out = np.empty((resamples, runs))
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))  # about 16 MB of counts at a time
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        picks = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        counts = np.bincount(picks.ravel(), minlength=size * n).reshape(size, n)
        out[start : start + size] = counts @ weights / n
    return out


def compare(configs: Sequence[Sequence[np.ndarray]]) -> list[ConfigStats]:
    """Intervals for configurations scored on the same images, and each one against the best.

    Args:
        configs: Per configuration, one boolean array per seed (image i right or wrong), all over
            the same images in the same order.

    Returns:
        One `ConfigStats` per configuration, in the same order.
    """
    import numpy as np

    runs = [np.asarray(seed_run, dtype=bool) for config in configs for seed_run in config]
    draws_by_image = image_resamples(np.stack(runs))
    points, draws, start = [], [], 0
    for position, config in enumerate(configs):
        columns = list(range(start, start + len(config)))
        start += len(config)
        points.append(float(np.mean([runs[c].mean() for c in columns])))
        draws.append(_with_seeds(draws_by_image, columns, position))
    best = int(np.argmax(points))
    alone = len(configs) == 1
    out = []
    for position, config in enumerate(configs):
        low, high = (float(v) for v in np.percentile(draws[position], [50 * (1 - LEVEL), 50 * (1 + LEVEL)]))
        if alone or position == best:
            verdict, p_value, test = ("" if alone else BEST), math.nan, ""
        elif len(config) == 1 and len(configs[best]) == 1:
            mine, theirs = runs[_first_run(configs, position)], runs[_first_run(configs, best)]
            p_value, test = mcnemar_exact(int((theirs & ~mine).sum()), int((mine & ~theirs).sum())), MCNEMAR
        else:
            diff = draws[best] - draws[position]
            p_value = min(1.0, 2 * min(float((diff <= 0).mean()), float((diff >= 0).mean())))
            test = BOOTSTRAP
        if test:
            verdict = TIED if p_value >= ALPHA else WORSE
        diff = math.nan if alone else points[position] - points[best]
        out.append(ConfigStats(points[position], low, high, verdict, diff, p_value, test, best))
    return out


def _with_seeds(draws_by_image: np.ndarray, columns: list[int], position: int) -> np.ndarray:
    """A configuration's accuracy per resample: its seeds' mean, the seeds drawn with replacement."""
    import numpy as np

    if len(columns) == 1:
        return draws_by_image[:, columns[0]]
    rng = np.random.default_rng([SEED, position])
    pick = rng.integers(0, len(columns), size=(len(draws_by_image), len(columns)))
    mine = draws_by_image[:, columns]
    return np.take_along_axis(mine, pick, axis=1).mean(axis=1)


def _first_run(configs: Sequence[Sequence[Any]], position: int) -> int:
    return sum(len(c) for c in configs[:position])


def with_differences(
    df: pd.DataFrame, records: Sequence[RunRecord], labels: Sequence[str] | None = None
) -> pd.DataFrame:
    """The aggregated table with the `COLUMNS` above, read from each run's predictions.csv.

    Args:
        df: From `aggregate` (its `run_dirs`, `dataset` and `class_list_hash` are used).
        records: The records `df` aggregates.
        labels: A short label per row for `vs_best_config` (default: `labels.row_labels`).

    Returns:
        A copy of `df` with the columns added. A row whose runs lack a readable predictions.csv,
        or whose seeds were scored on different images, gets no numbers and a `stats_note`.
    """
    out = df.copy()
    for name in COLUMNS:
        out[name] = None
    if df.empty:
        return out
    labels = list(labels) if labels is not None else row_labels(df)
    groups: dict[tuple[Any, ...], list[tuple[int, list[np.ndarray]]]] = {}
    for position, runs in enumerate(row_runs(df, records)):
        read = _read_row(runs)
        if isinstance(read, str):
            # get_loc gives a slice or mask only for a repeated column name; these names are unique
            out.iat[position, out.columns.get_loc("stats_note")] = read  # type: ignore[index]
            continue
        image_labels, correct = read
        row = df.iloc[position]
        key = (row["dataset"], row["class_list_hash"], hashlib.sha256(image_labels.tobytes()).hexdigest())
        groups.setdefault(key, []).append((position, correct))
    for members in groups.values():
        results = compare([correct for _, correct in members])
        for (position, _), stats in zip(members, results, strict=True):
            values = {
                "final_top1_ci_low": stats.low,
                "final_top1_ci_high": stats.high,
                "vs_best": stats.verdict or None,
                "vs_best_diff": stats.diff,
                "vs_best_p": stats.p_value,
                "vs_best_test": stats.test or None,
                "vs_best_config": None if not stats.verdict else labels[members[stats.best][0]],
            }
            for name, value in values.items():
                out.iat[position, out.columns.get_loc(name)] = value  # type: ignore[index]  # as above
    for name in ("final_top1_ci_low", "final_top1_ci_high", "vs_best_diff", "vs_best_p"):
        out[name] = out[name].astype(float)
    return out


def _read_row(runs: Sequence[RunRecord]) -> tuple[np.ndarray, list[np.ndarray]] | str:
    """The labels and each run's right/wrong per image, or why they cannot be had.

    A run's predictions must be one per validation image, in split order: as many rows as its
    summary's `val_images`, with the ids 0, 1, ... in order. Any other file (cut short, rows dropped,
    duplicated or shuffled) would give an interval of some other set of images, so the row gets none.
    """
    import numpy as np

    labels: np.ndarray | None = None
    correct = []
    if not runs:
        return "no interval: its runs were not found"
    for run in runs:
        path = run.path
        if not (path / PREDICTIONS).is_file():
            return f"no interval: no {PREDICTIONS} in {path}"
        try:
            rows = RunDir(path).read_predictions()
        except SchemaError as exc:
            return f"no interval: {exc.one_line()}"
        if not rows:
            return f"no interval: {path} has no predictions"
        expected = run.summary.val_images if run.summary is not None else len(rows)
        if len(rows) != expected or any(r.index != i for i, r in enumerate(rows)):
            return (
                f"no interval: {path / PREDICTIONS} does not match the run's {expected} validation "
                f"images ({len(rows)} rows; ids must be 0 to {expected - 1} in order)"
            )
        mine = np.array([r.label for r in rows], dtype=np.int64)
        if labels is not None and not np.array_equal(mine, labels):
            return "no interval: its seeds were scored on different images"
        labels = mine
        correct.append(np.array([r.label == r.predicted for r in rows], dtype=bool))
    assert labels is not None
    return labels, correct


def method_line(df: pd.DataFrame) -> str:
    """One line under the table that names the interval and the tests this table used."""
    tests = sorted({str(t) for t in df["vs_best_test"] if isinstance(t, str)})
    best = list(dict.fromkeys(str(b) for b in df["vs_best_config"] if isinstance(b, str)))
    line = (
        f"final 95% CI: percentile bootstrap over the validation images ({RESAMPLES} resamples, seed "
        f"{SEED}; the seeds drawn too where n > 1)."
    )
    if best:
        line += (
            f" vs best: final top-1 minus that of the most accurate configuration on the same images "
            f"({'; '.join(best)}), by {' and '.join(_TEST_WHEN[t] for t in tests) or 'no test'}; "
            f"tied: not significantly different at {ALPHA:.0%} (p >= {ALPHA})."
        )
    return line


_TEST_WHEN = {
    MCNEMAR: f"the {MCNEMAR} (binomial on the images only one of the two gets right; one seed each)",
    BOOTSTRAP: f"a {BOOTSTRAP} ({RESAMPLES} resamples; several seeds)",
}


def notes(df: pd.DataFrame) -> list[str]:
    """What the interval and test columns are, and where they are missing or limited."""
    out = [
        "final 95% CI and vs best use each run's final prediction per validation image "
        "(predictions.csv): they are about the final top-1, not the best epoch's."
    ]
    single = df[(df["n"] == 1) & df["final_top1_ci_low"].notna()]
    if len(single):
        out.append(
            f"{len(single)} configuration(s) with one seed (n = 1): seed variance is unmeasured; "
            "their interval covers only which images were drawn, not another training run."
        )
    labels = row_labels(df)
    for position, note in enumerate(df["stats_note"]):
        if isinstance(note, str):
            out.append(f"{labels[position]}: {note}.")
    return out
