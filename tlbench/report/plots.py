"""The report's figures, drawn headless (matplotlib's object API with the Agg renderer, no pyplot).

Four PNG files, each written atomically:

- `val_top1_curves.png`: validation top-1 per epoch, one line per configuration (mean over seeds,
  shaded ±1 sample sd), with the zero-training baselines as labelled grey lines;
- `val_loss_curves.png`: validation cross-entropy per epoch, the same way;
- `top1_vs_throughput.png`: best validation top-1 against training images/s (log scale), the
  Pareto front (no other configuration both faster and more accurate) ringed and joined;
- `top1_vs_freeze.png`: best validation top-1 against the share of the backbone frozen, one line
  per backbone (and recipe, where several), with the baselines.

With tuned rows (`tlbench sweep --tune`), a fifth, `tuning_history.png`: one panel per tuned
configuration, its best selection top-1 so far against the trial number (`tuning_figure`).

`seed_curves` draws one configuration's runs, a line per seed, for the report page, which embeds
these figures through `comparison_figures` and `png_bytes` instead of writing files.

Every text is plain: labels come from data paths and names, where a `$...$` would otherwise be
read as mathtext (and fail to parse), so mathtext and TeX are off while the figures are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlbench._io import write_with
from tlbench._util import is_missing
from tlbench.report.aggregate import freeze_order, row_runs
from tlbench.report.collect import RunRecord
from tlbench.report.labels import row_labels, shared_label

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

PLOT_FILES = (
    "val_top1_curves.png",
    "val_loss_curves.png",
    "top1_vs_throughput.png",
    "top1_vs_freeze.png",
)
TUNING_FILE = "tuning_history.png"
"""The tuning history of the tuned rows (only with some)."""


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates higher-is-better.

    A point is dominated when another is at least as good in both coordinates and better in one;
    equal points are all on the front. Points with a NaN or infinite coordinate are never on it.

    Args:
        points: (throughput, accuracy) pairs, or any two higher-is-better quantities.

    Returns:
        The indices on the front, in increasing order.
    """
    valid = [(i, x, y) for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    front = []
    for i, x, y in valid:
        dominated = any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, x2, y2 in valid if j != i)
        if not dominated:
            front.append(i)
    return front


def make_plots(records: Sequence[RunRecord], df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Draw the report's figures into `out_dir` (created if needed).

    Args:
        records: From `collect_runs` (their metrics.csv curves feed the per-epoch plots).
        df: From `aggregate` over the same records (its `run_dirs` column links rows to runs).
        out_dir: Where the PNG files go.

    Returns:
        The files written. A figure with nothing to show (no rows, no per-epoch metrics, no
        throughput numbers) is left out; an empty table gives no files.
    """
    written = []
    with plain_text():  # drawing and saving: tick labels are made when the figure is saved
        figures = list(comparison_figures(records, df))  # drawn one at a time, as the page does
        if (tuning := tuning_figure(df)) is not None:
            figures.append((TUNING_FILE, tuning))
        for name, fig in figures:
            path = Path(out_dir) / name
            write_with(path, partial(fig.savefig, format="png", bbox_inches="tight"))
            written.append(path)
    return written


PLAIN_TEXT: dict[RcKeyType, Any] = {"text.parse_math": False, "text.usetex": False}
"""Matplotlib settings under which every label is shown literally (`$x$` as `$x$`)."""


def plain_text() -> AbstractContextManager[Any]:
    """Draw and save inside this: every label literal (`PLAIN_TEXT`)."""
    from matplotlib import rc_context

    return rc_context(PLAIN_TEXT)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (call inside `plain_text`); cropped to what it draws unless it has a
    layout engine of its own (one drawing instead of two)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches=None if fig.get_layout_engine() else "tight")
    return buffer.getvalue()


def comparison_figures(records: Sequence[RunRecord], df: pd.DataFrame) -> Iterator[tuple[str, Figure]]:
    """The figures of `make_plots`, drawn one at a time as (file name, figure); call inside
    `plain_text`. Figures with nothing to show are left out; an empty table gives none."""
    if df.empty:
        return
    runs = row_runs(df, records)
    labels = row_labels(df)
    drawers: tuple[tuple[str, Callable[[], Figure | None]], ...] = (
        (PLOT_FILES[0], lambda: _curves(df, runs, labels, "val_top1")),
        (PLOT_FILES[1], lambda: _curves(df, runs, labels, "val_loss")),
        (PLOT_FILES[2], lambda: _throughput(df, labels)),
        (PLOT_FILES[3], lambda: _freeze(df)),
    )
    for name, draw in drawers:
        fig = draw()
        if fig is not None:
            yield name, fig


def seed_curves(runs: Sequence[RunRecord], title: str) -> Figure | None:
    """One configuration's runs, one line per seed: validation top-1 (left), training and
    validation loss (right). None when no run has per-epoch metrics."""
    curves = [r for r in runs if r.curves.get("epoch")]
    if not curves:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9.0, 3.2), dpi=90, layout="constrained")
    top1, loss = fig.subplots(1, 2)
    fig.suptitle(title, fontsize=9)
    for color, run in zip(_colors(len(curves)), curves, strict=True):
        epochs = run.curves["epoch"]
        label = f"seed {run.seed}" if run.seed is not None else run.path.name
        top1.plot(
            epochs, [100 * v for v in run.curves["val_top1"]], color=color, marker="o", ms=3, label=label
        )
        top1.plot(epochs, [100 * v for v in run.curves["train_top1"]], color=color, ls=":", lw=1)
        loss.plot(epochs, run.curves["val_loss"], color=color, marker="o", ms=3, label=label)
        loss.plot(epochs, run.curves["train_loss"], color=color, ls=":", lw=1)
    for ax, ylabel in ((top1, "top-1 accuracy (%)"), (loss, "loss (cross-entropy)")):
        ax.set_xlabel("epoch (solid: validation, dotted: training)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    top1.legend(fontsize=7)
    return fig


def tuning_figure(df: pd.DataFrame, columns: int = 3) -> Figure | None:
    """One panel per tuned row: each trial's selection top-1 (dots; a pruned or failed trial has
    none) and the best so far (a step line) against the trial number, the best trial ringed.
    None without a tuned row (no `tuning` column, or no history in it)."""
    from tlbench.report.tuning import best_so_far, values_text

    if "tuning" not in df:
        return None
    labels = row_labels(df)
    panels = [
        (labels[i], t, df["tuned"].iloc[i] if "tuned" in df else None)
        for i, t in enumerate(df["tuning"])
        if isinstance(t, dict) and t.get("history")
    ]
    if not panels:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ncols = min(columns, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.8 * nrows + 0.6), dpi=100, layout="constrained")
    fig.suptitle(
        "Tuning history: the best selection top-1 so far, per trial\n"
        "(dots: each trial's value; pruned and failed trials have none; ringed: the chosen trial)",
        fontsize=9,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax, (label, tuning, tuned) in zip(axes.flat, panels, strict=False):
        history = [(int(n), v) for n, v in tuning["history"]]
        trials, best = best_so_far(history)
        done = [(n + 1, 100 * v) for n, v in history if v is not None]
        ax.scatter([x for x, _ in done], [y for _, y in done], s=14, color="0.55", zorder=2)
        ax.step(trials, [100 * b for b in best], where="post", color="tab:blue", lw=1.5)
        if tuning.get("best_trial") is not None and tuning.get("best_select_top1") is not None:
            x, y = tuning["best_trial"] + 1, 100 * tuning["best_select_top1"]
            ax.scatter([x], [y], s=90, facecolors="none", edgecolors="black", zorder=3)
        chosen = f"{values_text(tuned)}; " if isinstance(tuned, dict) and tuned else ""
        counts = f"{len(history)} trials, {tuning.get('pruned', 0)} pruned"
        ax.set_title(f"{label}\n{chosen}{counts}", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("selection top-1 (%)", fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return fig


def _figure(title: str, subtitle: str) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 5.0), dpi=110)
    ax = fig.subplots()
    ax.set_title(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig, ax


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _baselines(ax: Any, df: pd.DataFrame) -> None:
    """A dashed horizontal line, labelled on the plot, at each backbone's zero-training top-1."""
    seen: dict[str, float] = {}
    for backbone, value in zip(df["backbone"], df["baseline_top1"], strict=True):
        if not is_missing(value):
            seen.setdefault(str(backbone), 100 * float(value))
    styles = ("--", "-.", ":", (0, (5, 1, 1, 1)))
    for k, (backbone, value) in enumerate(sorted(seen.items())):
        ax.axhline(value, color="0.35", ls=styles[k % len(styles)], lw=1)
        ax.annotate(
            f"{backbone}, no training: {value:.1f}%",
            xy=(0.01, value),
            xycoords=ax.get_yaxis_transform(),
            xytext=(0, 2),
            textcoords="offset points",
            fontsize=7,
            color="0.25",
            va="bottom",
        )


def _mean_curve(runs: Sequence[RunRecord], column: str) -> tuple[list[float], list[float], list[float]]:
    """Per epoch: mean and sample sd over the runs that have that epoch (sd NaN for one run)."""
    import statistics

    by_epoch: dict[float, list[float]] = {}
    for run in runs:
        for epoch, value in zip(run.curves.get("epoch", []), run.curves.get(column, []), strict=False):
            if math.isfinite(epoch) and math.isfinite(value):
                by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    means = [statistics.mean(by_epoch[e]) for e in epochs]
    sds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else math.nan for e in epochs]
    return epochs, means, sds


def _curves(df: pd.DataFrame, runs: list[list[RunRecord]], labels: list[str], column: str) -> Figure | None:
    accuracy = column == "val_top1"
    scale = 100.0 if accuracy else 1.0
    curves = [_mean_curve(group, column) for group in runs]
    if not any(epochs for epochs, _, _ in curves):
        return None
    title = "Validation top-1 accuracy per epoch" if accuracy else "Validation loss per epoch"
    subtitle = "mean over seeds, shaded ±1 sample standard deviation"
    if common := shared_label(df, ("backbone", "recipe", "dataset")):
        subtitle += f"; {common}"
    fig, ax = _figure(title, subtitle)
    for color, label, (epochs, means, sds) in zip(_colors(len(df)), labels, curves, strict=True):
        if not epochs:
            continue
        y = [scale * m for m in means]
        ax.plot(epochs, y, color=color, lw=1.5, marker="o" if len(epochs) < 30 else None, ms=3, label=label)
        if any(math.isfinite(s) for s in sds):
            lo = [scale * (m - s) if math.isfinite(s) else scale * m for m, s in zip(means, sds, strict=True)]
            hi = [scale * (m + s) if math.isfinite(s) else scale * m for m, s in zip(means, sds, strict=True)]
            ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, lw=0)
    if accuracy:
        _baselines(ax, df)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(
        "validation top-1 accuracy (%)" if accuracy else "validation loss (cross-entropy, mean per image)"
    )
    _legend(ax)
    return fig


def _throughput(df: pd.DataFrame, labels: list[str]) -> Figure | None:
    xs = [_float(v) for v in df["train_images_per_sec"]]
    ys = [100 * _float(v) for v in df["best_val_top1_mean"]]
    errs = [0.0 if is_missing(v) else 100 * float(v) for v in df["best_val_top1_std"]]
    points = [(x if x > 0 else math.nan, y) for x, y in zip(xs, ys, strict=True)]
    front = pareto_front(points)
    if not front:
        return None
    devices = sorted({str(d) for d in df["device"] if not is_missing(d)})
    subtitle = (
        "ringed and joined: the Pareto front (no other configuration is both faster and more accurate)"
        f"\nmean over seeds, bars ±1 sample sd; device: {'; '.join(devices) or 'unknown'}"
    )
    fig, ax = _figure("Best validation top-1 against training throughput", subtitle)
    for color, label, (x, y), err in zip(_colors(len(df)), labels, points, errs, strict=True):
        if math.isfinite(x) and math.isfinite(y):
            ax.errorbar([x], [y], yerr=[err], fmt="o", color=color, ms=6, capsize=3, label=label)
    ordered = sorted(front, key=lambda i: points[i][0])
    ax.plot([points[i][0] for i in ordered], [points[i][1] for i in ordered], color="black", ls=":", lw=1)
    ax.scatter(
        [points[i][0] for i in ordered],
        [points[i][1] for i in ordered],
        s=220,
        facecolors="none",
        edgecolors="black",
        lw=1.2,
        label="Pareto front",
        zorder=3,
    )
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("training throughput (images per second, log scale; median over epochs)")
    ax.set_ylabel("best validation top-1 accuracy (%)")
    _legend(ax)
    return fig


def _freeze(df: pd.DataFrame) -> Figure | None:
    fractions = [_float(v) for v in df["frozen_fraction"]]
    ys = [100 * _float(v) for v in df["best_val_top1_mean"]]
    errs = [0.0 if is_missing(v) else 100 * float(v) for v in df["best_val_top1_std"]]
    use_fraction = all(math.isfinite(f) for f in fractions)
    specs = [_str(v) for v in df["freeze"]]
    order = sorted(set(specs), key=freeze_order)
    xs = [100 * f for f in fractions] if use_fraction else [float(order.index(s)) for s in specs]

    series_labels = row_labels(df, exclude={"freeze"})
    series: dict[str, list[int]] = {}
    for i, label in enumerate(series_labels):
        if math.isfinite(ys[i]):
            series.setdefault(label, []).append(i)
    if not series:
        return None
    subtitle = "mean over seeds, bars ±1 sample sd; grey lines: the backbone with no training"
    if common := shared_label(df, ("recipe", "dataset")):
        subtitle += f"; {common}"
    fig, ax = _figure("Best validation top-1 against freeze depth", subtitle)
    for color, (label, rows) in zip(_colors(len(series)), series.items(), strict=True):
        rows = sorted(rows, key=lambda i: xs[i])
        ax.errorbar(
            [xs[i] for i in rows],
            [ys[i] for i in rows],
            yerr=[errs[i] for i in rows],
            fmt="-o",
            color=color,
            ms=5,
            capsize=3,
            label=label,
        )
    _baselines(ax, df)
    if use_fraction:
        ax.set_xlabel("share of the backbone's parameters frozen (%)")
        ax.set_xlim(-3, 103)
    else:
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("freeze spec: first N layers, P% of parameters, or all (shallow to deep)")
    ax.set_ylabel("best validation top-1 accuracy (%)")
    _legend(ax)
    return fig


def _float(value: Any) -> float:
    return math.nan if is_missing(value) else float(value)


def _str(value: Any) -> str:
    return "" if is_missing(value) else str(value)
