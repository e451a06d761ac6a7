"""The columns of the human tables as data: one `_Spec` per column, in the wide table's order, each
with its `--columns` key, its header (and a shorter one for the terminal), how a row of `aggregate`
becomes its cell and its sort value, and when the table shows it at all.

`table_columns(df)` turns the specs that apply to a table into `Column`s; a custom group key's columns
(`aggregate(..., group_by=...)`) come after `freeze`. `COMPACT` is the terminal's default choice.
The whole-table facts some cells need (each backbone's best row, the recipe-override footnotes)
are worked out here too, so `render` and the page order and mark rows the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlbench._util import is_missing
from tlbench.report import stats
from tlbench.report.aggregate import freeze_order, group_key_columns
from tlbench.report.cells import (
    count,
    duration,
    epochs_cell,
    format_p,
    image_size,
    mean_sd,
    memory,
    pct_cell,
    per_hour,
    rate,
    sortable,
    text,
)
from tlbench.report.tuning import tuned_text

if TYPE_CHECKING:
    import pandas as pd

VARYING = (
    ("pool", "pool"),
    ("normalize", "normalize"),
    ("augment", "augment"),
    ("image_size", "image size"),
    ("select", "selection split"),
    ("weights_source", "weights"),
    ("dataset", "data"),
    ("class_list_hash", "class list"),
)
"""Configuration columns (column, label) shown only where rows differ (else named once in the notes)."""

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
class _Facts:
    """What some cells know about the whole table.

    Attributes:
        best: The index of each backbone's most accurate row (see `best_of_backbone`).
        footnotes: The number of each distinct recipe override (see `recipe_footnotes`).
    """

    best: set[Any]
    footnotes: dict[str, int]


_Cell = Callable[[Any, _Facts], Any]


def _always(df: pd.DataFrame) -> bool:
    return True


@dataclass(frozen=True)
class _Spec:
    """A column before it meets a table: `cell` and `sort` take the row and the table's `_Facts`;
    `when` says whether a table shows it at all (e.g. the test columns only where computed)."""

    key: str
    header: str
    cell: _Cell
    sort: _Cell
    short: str = ""
    when: Callable[[pd.DataFrame], bool] = _always

    def column(self, facts: _Facts) -> Column:
        cell, sort = self.cell, self.sort
        return Column(
            self.key,
            self.header,
            self.short or self.header,
            lambda r: cell(r, facts),
            lambda r: sort(r, facts),
        )


def _field(name: str, fmt: Callable[[Any], str] = text) -> _Cell:
    """A cell that shows one value of the row through `fmt`."""
    return lambda r, _: fmt(r[name])


def _raw(name: str) -> _Cell:
    """A sort value: the row's own value of one column."""
    return lambda r, _: sortable(r[name])


def _has(column: str) -> Callable[[pd.DataFrame], bool]:
    return lambda df: column in df


def _recipe_cell(r: Any, facts: _Facts) -> str:
    """The recipe's name; changed values are a footnote number, spelled out once under the table."""
    overrides = r.get("recipe_overrides")
    mark = f" [{facts.footnotes[str(overrides)]}]" if str(overrides) in facts.footnotes else ""
    return text(r["recipe"]) + mark


def _freeze_cell(r: Any, _: _Facts) -> str:
    spec = text(r["freeze"])
    fraction = r.get("frozen_fraction")
    if spec in ("none", "all") or is_missing(fraction):
        return spec
    return f"{spec} ({100 * float(fraction):.0f}%)"


def _freeze_sort(r: Any, _: _Facts) -> float:
    """Shallow to deep: the share frozen where known, else the spec's depth order."""
    fraction = r.get("frozen_fraction")
    if not is_missing(fraction):
        return float(fraction)
    kind, value = freeze_order(text(r["freeze"]))[:2]
    return 10.0 * kind + value / 1000.0


def _interval_cell(r: Any, _: _Facts) -> str:
    low, high = r["final_top1_ci_low"], r["final_top1_ci_high"]
    return "-" if is_missing(low) else f"{100 * float(low):.1f}–{100 * float(high):.1f}"


def _vs_best_cell(r: Any, _: _Facts) -> str:
    verdict, diff = r["vs_best"], r["vs_best_diff"]
    if is_missing(verdict):
        return "-"
    if verdict == stats.BEST:
        return "best"
    points = f"{100 * float(diff):+.2f}"
    return f"tied ({points})" if verdict == stats.TIED else points


def _any(column: str) -> Callable[[pd.DataFrame], bool]:
    """Shown where some row has a value (a tuned or raced sweep's objects)."""
    return lambda df: column in df and any(isinstance(v, dict) for v in df[column])


def _race_cell(r: Any, _: _Facts) -> str:
    race = r.get("race")
    if not isinstance(race, dict):
        return "-"
    return f"stopped: {race.get('reason')}" if race.get("stopped") else "finished"


def _baseline_cell(r: Any, _: _Facts) -> str:
    return "-" if is_missing(r["baseline_top1"]) else f"{100 * r['baseline_top1']:.2f}"


_SPECS: tuple[_Spec, ...] = (
    _Spec(
        "mark",
        "best of backbone",
        lambda r, f: "*" if r.name in f.best else "",
        lambda r, f: int(r.name in f.best),
        " ",
    ),
    _Spec("backbone", "backbone", _field("backbone"), _raw("backbone")),
    _Spec("recipe", "recipe", _recipe_cell, _raw("recipe")),
    _Spec("freeze", "freeze (% of backbone frozen)", _freeze_cell, _freeze_sort, "freeze"),
    # a custom group key's columns come here (see `table_columns`)
    *(
        _Spec(c, label, _field(c, image_size if c == "image_size" else text), _raw(c), when=_has(c))
        for c, label in VARYING
    ),
    _Spec(
        "tuned",
        "tuned values (trials, vs default)",
        lambda r, _: tuned_text(r.get("tuned"), r.get("tuning")),
        lambda r, _: text(r.get("tuned")),
        "tuned",
        _any("tuning"),
    ),
    _Spec("race", "race", _race_cell, lambda r, f: _race_cell(r, f), when=_any("race")),
    _Spec("epochs", "epochs", lambda r, _: epochs_cell(r["epochs_done"], r["epochs"]), _raw("epochs_done")),
    _Spec(
        "params",
        "params trainable / total",
        lambda r, _: f"{count(r['params_trainable'])} / {count(r['params_total'])}",
        _raw("params_trainable"),
        "params",
    ),
    _Spec(
        "top1",
        "val top-1 % best (n)",
        lambda r, _: pct_cell(r["best_val_top1_mean"], r["best_val_top1_std"], r["n"]),
        _raw("best_val_top1_mean"),
        "best top-1 %\n± sd (n)",
    ),
    _Spec(
        "top5",
        "val top-5 % at best",
        lambda r, _: pct_cell(r["best_val_top5_mean"], r["best_val_top5_std"]),
        _raw("best_val_top5_mean"),
    ),
    _Spec(
        "final",
        "val top-1 % final",
        lambda r, _: pct_cell(r["final_val_top1_mean"], r["final_val_top1_std"]),
        _raw("final_val_top1_mean"),
    ),
    _Spec(
        "ci",
        "val top-1 % final, 95% interval",
        _interval_cell,
        _raw("final_top1_ci_low"),
        "final\n95% CI",
        _has("vs_best"),
    ),
    _Spec(
        "vs_best", "final vs best (points)", _vs_best_cell, _raw("vs_best_diff"), "vs best", _has("vs_best")
    ),
    _Spec("p", "p vs best", _field("vs_best_p", format_p), _raw("vs_best_p"), when=_has("vs_best")),
    _Spec(
        "loss",
        "val loss final",
        lambda r, _: mean_sd(r["final_val_loss_mean"], r["final_val_loss_std"], 3),
        _raw("final_val_loss_mean"),
    ),
    _Spec(
        "baseline",
        "baseline top-1 % (no training)",
        _baseline_cell,
        _raw("baseline_top1"),
        "no-train\ntop-1 %",
    ),
    _Spec("leakage", "pretraining saw", _field("leakage"), _raw("leakage")),
    _Spec(
        "train_ips",
        "train img/s",
        _field("train_images_per_sec", rate),
        _raw("train_images_per_sec"),
        "train\nimg/s",
    ),
    _Spec("infer_ips", "infer img/s", _field("infer_images_per_sec", rate), _raw("infer_images_per_sec")),
    _Spec("memory", "peak memory", _field("peak_memory_bytes", memory), _raw("peak_memory_bytes")),
    _Spec("wall", "wall time per run", _field("wall_seconds", duration), _raw("wall_seconds"), "wall"),
    _Spec(
        "cost",
        "top-1 % per device-hour",
        _field("top1_per_device_hour", per_hour),
        _raw("top1_per_device_hour"),
    ),
    _Spec(
        "projected",
        "full schedule (projected)",
        lambda r, _: duration(r["projected_full_hours"] * 3600),
        _raw("projected_full_hours"),
    ),
    _Spec("device", "device", _field("device"), _raw("device")),
)
"""Every column a table may show, in the wide table's order."""

_GROUP_KEY_AT = [s.key for s in _SPECS].index("freeze") + 1


def table_columns(df: pd.DataFrame) -> dict[str, Column]:
    """Every column this table can show, by key, in the wide table's order."""
    facts = _Facts(best_of_backbone(df), recipe_footnotes(df))
    group_key = [_Spec(c, c, _field(c), _raw(c)) for c in group_key_columns(df)]
    specs = [*_SPECS[:_GROUP_KEY_AT], *group_key, *_SPECS[_GROUP_KEY_AT:]]
    return {s.key: s.column(facts) for s in specs if s.when(df)}


def column_keys(df: pd.DataFrame) -> list[str]:
    """Every column key `render.human_table` (and `--columns`) accepts for this table."""
    return list(table_columns(df))


def wide_keys(df: pd.DataFrame, available: dict[str, Column]) -> list[str]:
    """Every column but the configuration columns all rows share (named once in the notes)."""
    same = {c for c, _ in VARYING if c not in df or distinct(df[c]) < 2}
    keys = [k for k in available if k not in same and k != "mark"]
    after = keys.index("top1") + 1
    return [*keys[:after], "mark", *keys[after:]]


def distinct(series: Any) -> int:
    """How many different values (as shown) a column holds."""
    return len({text(v) for v in series})


def accuracy_key(r: Any) -> tuple[bool, float]:
    """Best val top-1 first, rows without one last."""
    value = r["best_val_top1_mean"]
    return (is_missing(value), 0.0 if is_missing(value) else -float(value))


def best_of_backbone(df: pd.DataFrame) -> set[Any]:
    """The index of each backbone's most accurate row, for backbones with two rows or more."""
    best: dict[str, list[Any]] = {}
    for index, r in df.iterrows():
        best.setdefault(text(r["backbone"]), []).append((accuracy_key(r), index))
    return {min(rows)[1] for rows in best.values() if len(rows) > 1 and not min(rows)[0][0]}


def recipe_footnotes(df: pd.DataFrame) -> dict[str, int]:
    """A number per distinct recipe override (best row first), shown once under the table."""
    order = sorted(range(len(df)), key=lambda i: accuracy_key(df.iloc[i]))
    seen: dict[str, int] = {}
    for i in order:
        overrides = df.iloc[i].get("recipe_overrides")
        if not is_missing(overrides) and overrides and str(overrides) not in seen:
            seen[str(overrides)] = len(seen) + 1
    return seen
