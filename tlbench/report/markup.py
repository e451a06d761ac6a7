"""Tables as Markdown and HTML text, every header and cell escaped: a class name, path or backbone
from the user's disk always reads as itself (no tag, link, emphasis or broken cell).

Used by the report's markdown and html tables (`render`) and by the bench report (`bench`).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

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


def render_rows(
    rows: list[dict[str, Any]],
    fmt: str,
    table: Callable[[list[dict[str, Any]]], tuple[list[str], list[list[str]]]],
    note: str = "",
) -> str:
    """Result rows (bench results, protocol results) in a report format: csv and json hold every
    raw field of every row; markdown and html the human table `table(rows)` gives, and `note`."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"
    if fmt == "csv":
        import pandas as pd

        return pd.DataFrame(rows).to_csv(index=False)
    titles, cells = table(rows)
    if fmt == "html":
        return html_table(titles, cells) + (f"\n<p class='caption'>{note}</p>" if note else "") + "\n"
    return markdown_table(titles, cells) + (f"\n\n{note}" if note else "") + "\n"
