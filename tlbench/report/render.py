"""The aggregated table as text: csv and json for machines, markdown, html and a rich table for people.

Machine formats carry the raw columns of `aggregate` (and `stats.with_differences`) at full
precision (accuracies as fractions, NaN as an empty csv cell or JSON null). Human formats show one
cell per quantity, accuracies in % as "76.12 ± 0.53 (3)" (mean ± sample sd (n seeds); "-" for the
sd of a single seed), rows sorted by accuracy, only the configuration columns that differ between
rows, a caption (recipe overrides as footnotes, the marks, the tests by name) and notes that say
what each number is. Each column has a key (`--columns`); the terminal shows `COMPACT` by default.
"""

from __future__ import annotations

import html
import json
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlbench._util import is_missing
from tlbench.errors import UsageError
from tlbench.report import stats
from tlbench.report.aggregate import COLUMNS, freeze_order
from tlbench.report.leakage import LEAK_SEEN

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

FORMATS = ("markdown", "csv", "json", "html")

# Configuration columns shown in human tables only where rows differ (else named once in the notes).
_VARYING = (
    ("pool", "pool"),
    ("normalize", "normalize"),
    ("augment", "augment"),
    ("image_size", "image size"),
    ("weights_source", "weights"),
    ("dataset", "data"),
    ("class_list_hash", "class list"),
)


COMPACT = ("mark", "backbone", "recipe", "freeze", "top1", "ci", "vs_best", "baseline", "train_ips", "wall")
"""The terminal's default columns: it fits 120 columns for backbone names up to about 20 characters."""


@dataclass(frozen=True)
class Column:
    """A column of the human tables: its key (for `--columns`), its header, a shorter header for the
    terminal, and how a row of `aggregate` becomes its cell and its sort value (for the page)."""

    key: str
    header: str
    short: str
    cell: Callable[[Any], str]
    sort: Callable[[Any], float | str | None]


@dataclass(frozen=True)
class HumanTable:
    """What markdown, html, the terminal and the page show: cells, rows best first, caption, notes.

    Attributes:
        columns: In display order.
        rows: One list of cells per configuration, the best val top-1 first.
        values: Each cell's sort value (a number, text, or None for none).
        order: Each row's position in the aggregated table.
        caption: Short lines under the table: recipe overrides, marks, the tests by name.
        notes: What each number is.
    """

    columns: list[Column]
    rows: list[list[str]]
    values: list[list[float | str | None]]
    order: list[int]
    caption: list[str]
    notes: list[str]

    @property
    def headers(self) -> list[str]:
        return [c.header for c in self.columns]


def render(df: pd.DataFrame, fmt: str) -> str:
    """Render the aggregated table.

    Args:
        df: From `aggregate` (and `stats.with_differences`, for the interval and test columns).
        fmt: "csv" or "json" (raw columns, full precision, accuracies as fractions), "markdown" or
            "html" (human cells in %, best first, with notes; html is a complete small page, the
            full report page is `tlbench.report.page`).

    Returns:
        The text, ending with a newline.

    Raises:
        UsageError: an unknown format.
    """
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(_records(df), indent=2) + "\n"
    if fmt == "markdown":
        return _markdown(human_table(df))
    if fmt == "html":
        return _html(human_table(df))
    raise UsageError(f"unknown report format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def print_table(
    df: pd.DataFrame, console: Console, columns: Sequence[str] | None = None, wide: bool = False
) -> None:
    """Print the human table on the terminal, then its caption and notes.

    Args:
        df: From `aggregate` (and `stats.with_differences`).
        console: Where to print.
        columns: Column keys to show (see `column_keys`); None: `COMPACT`.
        wide: Every column (what markdown shows); overrides `columns`.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if wide:
        columns = None
    elif not columns:
        columns = [k for k in COMPACT if k in column_keys(df)]  # the test columns need predictions
    table_data = human_table(df, columns)
    runs = int(df["n"].sum()) if len(df) else 0
    table = Table(
        title=f"{len(df)} configuration(s), {runs} run(s)",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,  # two spaces between columns: the compact table fits 120
    )
    for column in table_data.columns:  # a --group-by column is named by the user: text, not markup
        table.add_column(Text(column.header if wide else column.short), overflow="fold")
    keys = [c.key for c in table_data.columns]
    for cells in table_data.rows:
        styled = [Text(c) for c in cells]
        if "leakage" in keys and cells[keys.index("leakage")].startswith("seen"):
            styled[keys.index("leakage")].stylize("yellow")
        if "mark" in keys and cells[keys.index("mark")]:
            for text in styled:
                text.stylize("bold")
        table.add_row(*styled)
    console.print(table)
    for line in table_data.caption:
        console.print(Text(line))
    for note in table_data.notes:
        console.print(Text(note, style="dim"))


def column_keys(df: pd.DataFrame) -> list[str]:
    """Every column key `human_table` (and `--columns`) accepts for this table."""
    return list(_columns(df))


def human_table(df: pd.DataFrame, keys: Sequence[str] | None = None) -> HumanTable:
    """The cells a person reads: % accuracies with spread and n, units spelled out, best row first.

    Args:
        df: From `aggregate` (and `stats.with_differences`).
        keys: The columns to show, in order (see `column_keys`); None: all that say something
            (configuration columns only where rows differ, the test columns where computed).

    Raises:
        UsageError: A key this table has no column for.
    """
    available = _columns(df)
    if keys is None:
        keys = _wide_keys(df, available)
    unknown = [k for k in keys if k not in available]
    if unknown:
        raise UsageError(
            f"no column {', '.join(map(repr, unknown))} in this report",
            f"choose from {', '.join(available)}",
        )
    columns = [available[k] for k in keys]
    order = sorted(range(len(df)), key=lambda i: _accuracy_key(df.iloc[i]))
    rows, values = [], []
    for i in order:
        r = df.iloc[i]
        rows.append([c.cell(r) for c in columns])
        values.append([c.sort(r) for c in columns])
    caption = _caption(df, keys, [df.index[i] for i in order])
    return HumanTable(columns, rows, values, order, caption, _notes(df))


def _columns(df: pd.DataFrame) -> dict[str, Column]:
    """Every column this table can show, by key, in the wide table's order."""
    marks = _best_of_backbone(df)
    footnotes = _footnotes(df)
    extra = [c for c in df.columns if c not in COLUMNS and c not in stats.COLUMNS]  # a custom group key

    def col(
        key: str, header: str, cell: Callable[[Any], str], sort: Callable[[Any], Any], short: str = ""
    ) -> Column:
        return Column(key, header, short or header, cell, sort)

    def raw(name: str) -> Callable[[Any], Any]:
        return lambda r: _sortable(r[name])

    out = [
        col(
            "mark",
            "best of backbone",
            lambda r: "*" if r.name in marks else "",
            lambda r: int(r.name in marks),
            " ",
        ),
        col("backbone", "backbone", lambda r: _text(r["backbone"]), raw("backbone")),
        col("recipe", "recipe", lambda r: _recipe_cell(r, footnotes), raw("recipe")),
        col("freeze", "freeze (% of backbone frozen)", _freeze_cell, _freeze_sort, "freeze"),
        *(col(c, c, lambda r, c=c: _text(r[c]), raw(c)) for c in extra),
        *(
            col(
                c,
                label,
                (lambda r, c=c: _image_size(r[c])) if c == "image_size" else (lambda r, c=c: _text(r[c])),
                raw(c),
            )
            for c, label in _VARYING
            if c in df
        ),
        col("epochs", "epochs", lambda r: _epochs_cell(r["epochs_done"], r["epochs"]), raw("epochs_done")),
        col(
            "params",
            "params trainable / total",
            lambda r: f"{_count(r['params_trainable'])} / {_count(r['params_total'])}",
            raw("params_trainable"),
            "params",
        ),
        col(
            "top1",
            "val top-1 % best (n)",
            lambda r: pct_cell(r["best_val_top1_mean"], r["best_val_top1_std"], r["n"]),
            raw("best_val_top1_mean"),
            "best top-1 %\n± sd (n)",
        ),
        col(
            "top5",
            "val top-5 % at best",
            lambda r: pct_cell(r["best_val_top5_mean"], r["best_val_top5_std"]),
            raw("best_val_top5_mean"),
        ),
        col(
            "final",
            "val top-1 % final",
            lambda r: pct_cell(r["final_val_top1_mean"], r["final_val_top1_std"]),
            raw("final_val_top1_mean"),
        ),
    ]
    if "vs_best" in df:
        out += [
            col(
                "ci",
                "val top-1 % final, 95% interval",
                _interval_cell,
                raw("final_top1_ci_low"),
                "final\n95% CI",
            ),
            col("vs_best", "final vs best (points)", _vs_best_cell, raw("vs_best_diff"), "vs best"),
            col("p", "p vs best", lambda r: format_p(r["vs_best_p"]), raw("vs_best_p")),
        ]
    out += [
        col(
            "loss",
            "val loss final",
            lambda r: _mean_sd(r["final_val_loss_mean"], r["final_val_loss_std"], 3),
            raw("final_val_loss_mean"),
        ),
        col(
            "baseline",
            "baseline top-1 % (no training)",
            lambda r: "-" if is_missing(r["baseline_top1"]) else f"{100 * r['baseline_top1']:.2f}",
            raw("baseline_top1"),
            "no-train\ntop-1 %",
        ),
        col("leakage", "pretraining saw", lambda r: _text(r["leakage"]), raw("leakage")),
        col(
            "train_ips",
            "train img/s",
            lambda r: _rate(r["train_images_per_sec"]),
            raw("train_images_per_sec"),
            "train\nimg/s",
        ),
        col(
            "infer_ips",
            "infer img/s",
            lambda r: _rate(r["infer_images_per_sec"]),
            raw("infer_images_per_sec"),
        ),
        col("memory", "peak memory", lambda r: _bytes(r["peak_memory_bytes"]), raw("peak_memory_bytes")),
        col("wall", "wall time per run", lambda r: _duration(r["wall_seconds"]), raw("wall_seconds"), "wall"),
        col(
            "cost",
            "top-1 % per device-hour",
            lambda r: _per_hour(r["top1_per_device_hour"]),
            raw("top1_per_device_hour"),
        ),
        col(
            "projected",
            "full schedule (projected)",
            lambda r: _duration(r["projected_full_hours"] * 3600),
            raw("projected_full_hours"),
        ),
        col("device", "device", lambda r: _text(r["device"]), raw("device")),
    ]
    return {c.key: c for c in out}


def _wide_keys(df: pd.DataFrame, available: dict[str, Column]) -> list[str]:
    """Every column but the configuration columns all rows share (named once in the notes)."""
    same = {c for c, _ in _VARYING if c not in df or _distinct(df[c]) < 2}
    keys = [k for k in available if k not in same and k != "mark"]
    after = keys.index("top1") + 1
    return [*keys[:after], "mark", *keys[after:]]


def _accuracy_key(r: Any) -> tuple[bool, float]:
    """Best val top-1 first, rows without one last."""
    value = r["best_val_top1_mean"]
    return (is_missing(value), 0.0 if is_missing(value) else -float(value))


def _best_of_backbone(df: pd.DataFrame) -> set[Any]:
    """The index of each backbone's most accurate row, for backbones with two rows or more."""
    best: dict[str, list[Any]] = {}
    for index, r in df.iterrows():
        best.setdefault(_text(r["backbone"]), []).append((_accuracy_key(r), index))
    return {min(rows)[1] for rows in best.values() if len(rows) > 1 and not min(rows)[0][0]}


def _footnotes(df: pd.DataFrame) -> dict[str, int]:
    """A number per distinct recipe override (best row first), shown once under the table."""
    order = sorted(range(len(df)), key=lambda i: _accuracy_key(df.iloc[i]))
    seen: dict[str, int] = {}
    for i in order:
        overrides = df.iloc[i].get("recipe_overrides")
        if not is_missing(overrides) and overrides and str(overrides) not in seen:
            seen[str(overrides)] = len(seen) + 1
    return seen


def _caption(df: pd.DataFrame, keys: Sequence[str], shown: list[Any]) -> list[str]:
    lines = []
    if "recipe" in keys:
        lines += [f"[{k}] the recipe with {overrides}" for overrides, k in _footnotes(df).items()]
    if "mark" in keys and _best_of_backbone(df) & set(shown):
        lines.append("*: the most accurate row (val top-1 best) of its backbone")
    if "vs_best" in df and {"ci", "vs_best", "p"} & set(keys):
        lines.append(stats.method_line(df))
    return lines


def pct_cell(mean: Any, std: Any, n: Any = None) -> str:
    """A fraction as "76.12 ± 0.53 (3)" in %: mean ± sample sd ("-" when undefined) (n)."""
    if is_missing(mean):
        return "-"
    spread = "-" if is_missing(std) else f"{100 * float(std):.2f}"
    count = "" if is_missing(n) else f" ({int(n)})"
    return f"{100 * float(mean):.2f} ± {spread}{count}"


def format_p(p: Any) -> str:
    """A p-value in two significant digits, "<0.001" below that; "-" for none."""
    if is_missing(p):
        return "-"
    return "<0.001" if float(p) < 0.001 else f"{float(p):.2g}"


def _interval_cell(r: Any) -> str:
    low, high = r["final_top1_ci_low"], r["final_top1_ci_high"]
    return "-" if is_missing(low) else f"{100 * float(low):.1f}–{100 * float(high):.1f}"


def _vs_best_cell(r: Any) -> str:
    verdict, diff = r["vs_best"], r["vs_best_diff"]
    if is_missing(verdict):
        return "-"
    if verdict == stats.BEST:
        return "best"
    points = f"{100 * float(diff):+.2f}"
    return f"tied ({points})" if verdict == stats.TIED else points


def _notes(df: pd.DataFrame) -> list[str]:
    notes = [
        "Accuracy in % of the validation split. best: the best epoch's top-1, mean ± sample standard "
        "deviation over the n seeds ('-' for one seed); top-5 at that same epoch; final: after the "
        "last epoch. The best epoch was picked on these same images, so best is optimistic.",
        "baseline: the backbone with no training at all, its pretrained ImageNet classifier "
        "restricted to these classes, on the same class list ('-': no baseline run found).",
        "pretraining saw: 'seen: images+classes' means the backbone's ImageNet pretraining already "
        "trained on these very validation images with the same labels, so the accuracy measures "
        "recall as much as transfer; 'classes may overlap': a non-standard class list.",
        "train img/s: median over epochs (timed without evaluation), mean over seeds; infer img/s: the final "
        "validation pass; peak memory: the largest over seeds; wall time: the mean per run.",
    ]
    if len(df) and any(str(v).startswith(LEAK_SEEN) for v in df["leakage"]):
        notes[2] += " Rows marked 'seen' are not a measure of generalisation."
    if "vs_best" in df:
        notes += stats.notes(df)
    common = [
        f"{label} {_image_size(df[c].iloc[0]) if c == 'image_size' else _text(df[c].iloc[0])}"
        for c, label in _VARYING
        if c in df and len(df) and _distinct(df[c]) < 2
    ]
    if common:
        notes.append("All rows: " + "; ".join(common) + ".")
    if len(df) and (df["stopped_early"].fillna(0) > 0).any():
        notes.append("epochs a/b: the shortest seed ran a of the b planned epochs (stopped by --max-time).")
    return notes


_MARKDOWN_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Markdown's inline punctuation, `$` (GitHub's math), `|` (a cell border) and the backslash itself;
# `_` only where it could open or close emphasis (intra-word, as in `vit_base_patch16`, it is literal).
_MARKDOWN_SPECIAL = re.compile(r"[\\`*\[\]|~$]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def markdown_text(text: str) -> str:
    """`text` as Markdown that renders to exactly `text`: no tags, links, emphasis or cell breaks.

    `&`, `<` and `>` become HTML entities (a `<script>` from a data path stays text), and the
    characters Markdown reads as formatting are backslash-escaped.
    """
    escaped = _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), text)
    return "".join(_MARKDOWN_ENTITIES.get(c, c) for c in escaped)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table, one line per row, every header and cell escaped; no trailing newline."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(markdown_text(c) for c in cells) + " |"

    lines = [line(headers), "| " + " | ".join("---" for _ in headers) + " |"]
    lines += [line(cells) for cells in rows]
    return "\n".join(lines)


def html_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An html `<table>` with every header and cell escaped; no trailing newline."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _markdown(table: HumanTable) -> str:
    lines = [markdown_table(table.headers, table.rows), ""]
    lines += [f"- {markdown_text(note)}" for note in [*table.caption, *table.notes]]
    return "\n".join(lines) + "\n"


def _html(table: HumanTable) -> str:
    notes = "\n".join(f"<li>{html.escape(n)}</li>" for n in [*table.caption, *table.notes])
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>tlbench report</title>\n"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        "td{font-variant-numeric:tabular-nums}</style></head><body>\n"
        f"{html_table(table.headers, table.rows)}\n"
        f"<ul>\n{notes}\n</ul>\n</body></html>\n"
    )


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: python numbers, None for NaN / NA."""
    out = []
    for row in df.to_dict(orient="records"):
        out.append({str(k): _plain(v) for k, v in row.items()})
    return out


def _plain(value: Any) -> Any:
    if is_missing(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _distinct(series: Any) -> int:
    return len({_text(v) for v in series})


def _text(value: Any) -> str:
    return "-" if is_missing(value) else str(value)


def _recipe_cell(r: Any, footnotes: dict[str, int]) -> str:
    """The recipe's name; changed values are a footnote number, spelled out once under the table."""
    overrides = r.get("recipe_overrides")
    mark = f" [{footnotes[str(overrides)]}]" if str(overrides) in footnotes else ""
    return _text(r["recipe"]) + mark


def _freeze_cell(r: Any) -> str:
    spec = _text(r["freeze"])
    fraction = r.get("frozen_fraction")
    if spec in ("none", "all") or is_missing(fraction):
        return spec
    return f"{spec} ({100 * float(fraction):.0f}%)"


def _freeze_sort(r: Any) -> float:
    """Shallow to deep: the share frozen where known, else the spec's depth order."""
    fraction = r.get("frozen_fraction")
    if not is_missing(fraction):
        return float(fraction)
    kind, value, _ = freeze_order(_text(r["freeze"]))
    return 10.0 * kind + value / 1000.0


def _sortable(value: Any) -> float | str | None:
    """A cell's raw value as the page sorts it: a number, text, or None (missing: sorted last)."""
    if is_missing(value):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return str(value)


def _epochs_cell(done: Any, planned: Any) -> str:
    if is_missing(planned):
        return _text(done)
    if not is_missing(done) and isinstance(done, numbers.Real) and int(done) < int(planned):
        return f"{int(done)}/{int(planned)}"
    return str(planned)


def _image_size(value: Any) -> str:
    return "-" if is_missing(value) else f"{value} px"


def _count(value: Any) -> str:
    if is_missing(value) or not isinstance(value, numbers.Real):
        return _text(value)
    n = float(value)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{int(n)}"


def _mean_sd(mean: Any, std: Any, digits: int) -> str:
    if is_missing(mean):
        return "-"
    return f"{float(mean):.{digits}f} ± " + ("-" if is_missing(std) else f"{float(std):.{digits}f}")


def _rate(value: Any) -> str:
    return "-" if is_missing(value) else f"{float(value):,.0f}"


def _bytes(value: Any) -> str:
    if is_missing(value):
        return "-"
    n = float(value)
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB"


def _per_hour(value: Any) -> str:
    return "-" if is_missing(value) else f"{100 * float(value):,.1f}"


def _duration(seconds: Any) -> str:
    if is_missing(seconds):
        return "-"
    s = round(float(seconds))
    if s < 60:
        return f"{float(seconds):.1f}s" if seconds < 10 else f"{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
