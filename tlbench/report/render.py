"""The aggregated table as text: csv and json for machines, markdown, html and a rich table for people.

Machine formats carry the raw columns of `aggregate` (and `stats.with_differences`) at full
precision (accuracies as fractions, NaN as an empty csv cell or JSON null). Human formats show one
cell per quantity, accuracies in % as "76.12 ± 0.53 (3)" (mean ± sample sd (n seeds); "-" for the
sd of a single seed), rows sorted by accuracy, only the configuration columns that differ between
rows, a caption (recipe overrides as footnotes, the marks, the tests by name) and notes that say
what each number is. Each column has a key (`--columns`); the terminal shows `COMPACT` by default.

The columns themselves are a table of specs in `columns`, one value's formatting is `cells`, and
the escaping of markdown and html tables is `markup`; this module puts them together.
"""

from __future__ import annotations

import html
import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlbench._util import is_missing
from tlbench.errors import UsageError
from tlbench.report import stats
from tlbench.report.cells import image_size, text
from tlbench.report.columns import (
    COMPACT,
    VARYING,
    Column,
    accuracy_key,
    best_of_backbone,
    column_keys,
    distinct,
    recipe_footnotes,
    table_columns,
    wide_keys,
)
from tlbench.report.leakage import LEAK_SEEN
from tlbench.report.markup import html_table, markdown_table, markdown_text
from tlbench.report.tuning import OBJECT_COLUMNS, race_note

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

FORMATS = ("markdown", "csv", "json", "html")


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
    if fmt == "csv":  # a tuned or raced sweep's objects as JSON text
        objects = {
            c: df[c].map(lambda v: "" if v is None else json.dumps(v)) for c in OBJECT_COLUMNS if c in df
        }
        return df.assign(**objects).to_csv(index=False)
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
            for piece in styled:
                piece.stylize("bold")
        table.add_row(*styled)
    console.print(table)
    for line in table_data.caption:
        console.print(Text(line))
    for note in table_data.notes:
        console.print(Text(note, style="dim"))


def human_table(df: pd.DataFrame, keys: Sequence[str] | None = None) -> HumanTable:
    """The cells a person reads: % accuracies with spread and n, units spelled out, best row first.

    Args:
        df: From `aggregate` (and `stats.with_differences`).
        keys: The columns to show, in order (see `column_keys`); None: all that say something
            (configuration columns only where rows differ, the test columns where computed).

    Raises:
        UsageError: A key this table has no column for.
    """
    available = table_columns(df)
    if keys is None:
        keys = wide_keys(df, available)
    unknown = [k for k in keys if k not in available]
    if unknown:
        raise UsageError(
            f"no column {', '.join(map(repr, unknown))} in this report",
            f"choose from {', '.join(available)}",
        )
    shown = [available[k] for k in keys]
    order = sorted(range(len(df)), key=lambda i: accuracy_key(df.iloc[i]))
    rows, values = [], []
    for i in order:
        r = df.iloc[i]
        rows.append([c.cell(r) for c in shown])
        values.append([c.sort(r) for c in shown])
    caption = _caption(df, keys, [df.index[i] for i in order])
    return HumanTable(shown, rows, values, order, caption, _notes(df))


def _caption(df: pd.DataFrame, keys: Sequence[str], shown: list[Any]) -> list[str]:
    lines = []
    if "recipe" in keys:
        lines += [f"[{k}] the recipe with {overrides}" for overrides, k in recipe_footnotes(df).items()]
    if "mark" in keys and best_of_backbone(df) & set(shown):
        lines.append("*: the most accurate row (val top-1 best) of its backbone")
    if "vs_best" in df and {"ci", "vs_best", "p"} & set(keys):
        lines.append(stats.method_line(df))
    return lines


def _notes(df: pd.DataFrame) -> list[str]:
    notes = [
        "Accuracy in % of the validation split. best: the validation top-1 at the best epoch, mean ± "
        "sample standard deviation over the n seeds ('-' for one seed); top-5 at that same epoch; "
        "final: after the last epoch.",
        best_note(df),
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
    common = [  # the selection split is said by the best note
        f"{label} {image_size(df[c].iloc[0]) if c == 'image_size' else text(df[c].iloc[0])}"
        for c, label in VARYING
        if c in df and len(df) and distinct(df[c]) < 2 and c != "select"
    ]
    if common:
        notes.append("All rows: " + "; ".join(common) + ".")
    if (note := race_note(df)) is not None:
        notes.append(note)
    if len(df) and (df["stopped_early"].fillna(0) > 0).any():
        notes.append("epochs a/b: the shortest seed ran a of the b planned epochs (stopped by --max-time).")
    return notes


def best_note(df: pd.DataFrame) -> str:
    """What the best column's epoch was chosen on: the selection split (held out of training, so the
    validation top-1 at that epoch is a fair estimate) or validation itself (optimistic)."""
    chosen = {str(v) for v in df.get("best_chosen_on", []) if not is_missing(v)}
    sizes = sorted({int(v) for v in df.get("select_images", []) if not is_missing(v)})
    n = f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,}-{sizes[-1]:,}" if sizes else "?"
    on_select = f"epoch chosen on the selection split ({n} images held out of training, never validation)"
    on_val = "chosen on validation (optimistic: the epoch was picked on these same images; final is not)"
    if chosen == {"select"}:
        return f"best: {on_select}."
    if "select" in chosen:
        return f"best: with a selection split (its column), {on_select}; without one, {on_val}."
    return f"best: {on_val}."


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
