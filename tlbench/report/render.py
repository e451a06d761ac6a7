"""The aggregated table as text: csv and json for machines, markdown, html and a rich table for people.

Machine formats carry the raw columns of `aggregate` at full precision (accuracies as fractions,
NaN as an empty csv cell or JSON null). Human formats show one cell per quantity, accuracies in %
as "76.12 ± 0.53 (3)" (mean ± sample sd (n seeds); "-" for the sd of a single seed), only the
configuration columns that differ between rows, and notes that say what each number is.
"""

from __future__ import annotations

import html
import json
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlbench._util import is_missing
from tlbench.errors import UsageError
from tlbench.report.aggregate import COLUMNS
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


@dataclass(frozen=True)
class HumanTable:
    """Headers, rows of cells and explanatory notes, shared by markdown, html and the terminal."""

    headers: list[str]
    rows: list[list[str]]
    notes: list[str]


def render(df: pd.DataFrame, fmt: str) -> str:
    """Render the aggregated table.

    Args:
        df: From `aggregate`.
        fmt: "csv" or "json" (raw columns, full precision, accuracies as fractions), "markdown" or
            "html" (human cells in %, with notes; html is a complete small page).

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


def print_table(df: pd.DataFrame, console: Console) -> None:
    """Print the human table (the markdown cells) as a rich table, then its notes."""
    from rich.table import Table
    from rich.text import Text

    table_data = human_table(df)
    runs = int(df["n"].sum()) if len(df) else 0
    table = Table(title=f"{len(df)} configuration(s), {runs} run(s)", header_style="bold")
    for header in table_data.headers:  # a --group-by column is named by the user: text, not markup
        table.add_column(Text(header), overflow="fold")
    leak_col = table_data.headers.index("pretraining saw")
    for cells in table_data.rows:
        styled = [Text(c) for c in cells]
        if cells[leak_col].startswith("seen"):
            styled[leak_col].stylize("yellow")
        table.add_row(*styled)
    console.print(table)
    for note in table_data.notes:
        console.print(Text(note, style="dim"))


def human_table(df: pd.DataFrame) -> HumanTable:
    """The cells a person reads: % accuracies with spread and n, units spelled out."""
    varying = [(col, label) for col, label in _VARYING if col in df and _distinct(df[col]) > 1]
    extra = [c for c in df.columns if c not in COLUMNS]  # a custom group key's columns
    headers = ["backbone", "recipe", "freeze (% of backbone frozen)"]
    headers += extra + [label for _, label in varying]
    headers += [
        "epochs",
        "params trainable / total",
        "val top-1 % best (n)",
        "val top-5 % at best",
        "val top-1 % final",
        "val loss final",
        "baseline top-1 % (no training)",
        "pretraining saw",
        "train img/s",
        "infer img/s",
        "peak memory",
        "wall time per run",
        "device",
    ]
    rows = []
    for _, r in df.iterrows():
        cells = [_text(r["backbone"]), _recipe_cell(r), _freeze_cell(r)]
        cells += [_text(r[c]) for c in extra]
        cells += [_image_size(r[c]) if c == "image_size" else _text(r[c]) for c, _ in varying]
        cells += [
            _epochs_cell(r["epochs_done"], r["epochs"]),
            f"{_count(r['params_trainable'])} / {_count(r['params_total'])}",
            pct_cell(r["best_val_top1_mean"], r["best_val_top1_std"], r["n"]),
            pct_cell(r["best_val_top5_mean"], r["best_val_top5_std"]),
            pct_cell(r["final_val_top1_mean"], r["final_val_top1_std"]),
            _mean_sd(r["final_val_loss_mean"], r["final_val_loss_std"], 3),
            "-" if is_missing(r["baseline_top1"]) else f"{100 * r['baseline_top1']:.2f}",
            _text(r["leakage"]),
            _rate(r["train_images_per_sec"]),
            _rate(r["infer_images_per_sec"]),
            _bytes(r["peak_memory_bytes"]),
            _duration(r["wall_seconds"]),
            _text(r["device"]),
        ]
        rows.append(cells)
    return HumanTable(headers, rows, _notes(df, varying))


def pct_cell(mean: Any, std: Any, n: Any = None) -> str:
    """A fraction as "76.12 ± 0.53 (3)" in %: mean ± sample sd ("-" when undefined) (n)."""
    if is_missing(mean):
        return "-"
    spread = "-" if is_missing(std) else f"{100 * float(std):.2f}"
    count = "" if is_missing(n) else f" ({int(n)})"
    return f"{100 * float(mean):.2f} ± {spread}{count}"


def _notes(df: pd.DataFrame, varying: list[tuple[str, str]]) -> list[str]:
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
    shown = {c for c, _ in varying}
    common = [
        f"{label} {_image_size(df[c].iloc[0]) if c == 'image_size' else _text(df[c].iloc[0])}"
        for c, label in _VARYING
        if c in df and c not in shown and len(df)
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
    lines += [f"- {markdown_text(note)}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _html(table: HumanTable) -> str:
    notes = "\n".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
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


def _recipe_cell(r: Any) -> str:
    overrides = r.get("recipe_overrides")
    return _text(r["recipe"]) + (f" ({overrides})" if not is_missing(overrides) and overrides else "")


def _freeze_cell(r: Any) -> str:
    spec = _text(r["freeze"])
    fraction = r.get("frozen_fraction")
    if spec in ("none", "all") or is_missing(fraction):
        return spec
    return f"{spec} ({100 * float(fraction):.0f}%)"


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
