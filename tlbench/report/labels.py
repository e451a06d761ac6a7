"""Row labels: a short name for each row of the aggregated table, made of the backbone and the
configuration columns that differ between rows ("resnet50 / freeze stages:2 / aug light").

The figures' legends, the page's per-configuration headings and the vs-best column of
`stats.with_differences` all name rows this way, so a row reads the same everywhere. Pure text
work on the table: no pandas, numpy or matplotlib import here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from tlbench._util import is_missing
from tlbench.report.aggregate import group_key_columns

if TYPE_CHECKING:
    import pandas as pd

LABEL_FORMATS: tuple[tuple[str, str], ...] = (
    ("backbone", "{}"),
    ("recipe", "{}"),
    ("recipe_overrides", "{}"),
    ("freeze", "freeze {}"),
    ("pool", "pool {}"),
    ("normalize", "norm {}"),
    ("augment", "aug {}"),
    ("image_size", "{} px"),
    ("epochs", "{} epochs"),
    ("weights_source", "{}"),
    ("dataset", "{}"),
    ("class_list_hash", "classes {}"),
)
"""How a configuration column reads in a label: (column, format of its value)."""


def row_labels(df: pd.DataFrame, exclude: Collection[str] = ()) -> list[str]:
    """A short legend label per row: the backbone plus the configuration columns that differ."""
    extra = [(c, f"{c}={{}}") for c in group_key_columns(df)]
    parts: list[list[str]] = [[] for _ in range(len(df))]
    for column, fmt in (*LABEL_FORMATS, *extra):
        if column in exclude or column not in df:
            continue
        values = [_str(v) for v in df[column]]
        if column != "backbone" and len(set(values)) < 2:
            continue
        if column == "weights_source" and "backbone" in df and _tied_to(df["backbone"], values):
            continue  # one weight source per backbone: the backbone already names it
        for i, value in enumerate(values):
            if value:
                parts[i].append(fmt.format(value))
    return [" / ".join(p) or f"row {i + 1}" for i, p in enumerate(parts)]


def shared_label(df: pd.DataFrame, columns: Sequence[str]) -> str:
    """The values shared by every row among `columns`, for a subtitle."""
    shared = []
    for column, fmt in LABEL_FORMATS:
        if column in columns and column in df:
            values = {_str(v) for v in df[column]}
            if len(values) == 1 and (value := values.pop()):
                shared.append(fmt.format(value))
    return " / ".join(shared)


def _tied_to(keys: Any, values: Sequence[str]) -> bool:
    """True when every key has a single value."""
    mapping: dict[str, set[str]] = {}
    for key, value in zip(keys, values, strict=True):
        mapping.setdefault(_str(key), set()).add(value)
    return all(len(v) == 1 for v in mapping.values())


def _str(value: Any) -> str:
    return "" if is_missing(value) else str(value)
