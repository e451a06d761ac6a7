"""The protocols figure of the report page: each backbone's accuracy under each protocol, side by side.

    with plain_text():
        fig = protocols_figure(rows)      # rows from collect_eval (+ with_finetune); None: nothing to draw

One group of bars per protocol (fine-tune top-1, linear-probe top-1, k-NN top-1, then each few-shot
setting of the prototype head, e.g. 5-way 1-shot), one bar per backbone in each, in the same colour
in every group, with its 95 % interval as an error bar: the same numbers as the protocols table
(`protocols.protocols_table`). A protocol no row has is no group; a row without a protocol has no
bar in that group. Drawn with the styling of the page's other figures (`plots`); call inside
`plots.plain_text`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tlbench._util import is_missing
from tlbench.report.plots import _colors, _figure, _legend
from tlbench.report.protocols import fewshot_settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Protocol(NamedTuple):
    """One group of the figure: its x label and the row keys of its value and interval."""

    title: str
    key: str
    low: str | None
    high: str | None


def protocols_present(rows: list[dict[str, Any]]) -> list[Protocol]:
    """The protocols at least one row has a value for, in the table's order (fine-tune first; its
    value, the best final top-1 of the backbone's runs, has no interval)."""
    candidates = [
        Protocol("fine-tune\ntop-1", "finetune_top1", None, None),
        Protocol("linear probe\ntop-1", "linear_top1", "linear_low", "linear_high"),
        Protocol("k-NN\ntop-1", "knn_top1", "knn_low", "knn_high"),
        *(Protocol(title, key, f"{key}_low", f"{key}_high") for key, title in fewshot_settings(rows)),
    ]
    return [p for p in candidates if any(not is_missing(r.get(p.key)) for r in rows)]


def backbone_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's legend label: its backbone, with its eval folder where that backbone is in several."""
    counts = Counter(str(r["backbone"]) for r in rows)
    return [
        f"{r['backbone']} ({Path(str(r.get('eval', '?'))).name})"
        if counts[str(r["backbone"])] > 1
        else str(r["backbone"])
        for r in rows
    ]


def protocols_figure(rows: list[dict[str, Any]]) -> Figure | None:
    """Grouped bars: per protocol, each backbone's accuracy (%) with its 95 % interval (an error bar).

    Args:
        rows: Protocol rows (`collect_eval`, with `finetune_top1` from `with_finetune` where runs
            were reported beside them).

    Returns:
        The figure; None when no row has any protocol's value. Each backbone's bars are one
        `BarContainer` labelled with its legend label, a bar per protocol it has.
    """
    protocols = protocols_present(rows)
    if not protocols:
        return None
    subtitle = (
        "linear probe and k-NN: validation top-1, 95 % bootstrap interval over images\n"
        "few-shot (prototype head): mean accuracy over the episodes, 95 % t-interval"
    )
    if protocols[0].key == "finetune_top1":
        subtitle += "\nfine-tune: the best final validation top-1 of the backbone's runs (no interval)"
    fig, ax = _figure("Accuracy per protocol, one bar per backbone", subtitle)
    width = 0.8 / len(rows)
    for i, (color, label, row) in enumerate(
        zip(_colors(len(rows)), backbone_labels(rows), rows, strict=True)
    ):
        _bars(ax, protocols, row, (i - (len(rows) - 1) / 2) * width, width, color=color, label=label)
    ax.set_xticks(range(len(protocols)), [p.title for p in protocols])
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("protocol")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(bottom=0)
    _legend(ax)
    return fig


def _bars(
    ax: Any, protocols: list[Protocol], row: dict[str, Any], offset: float, width: float, **style: Any
) -> None:
    """One row's bars, `offset` from each of its protocols' group centre, and their error bars."""
    bars = [
        (g + offset, 100 * float(row[p.key]), p)
        for g, p in enumerate(protocols)
        if not is_missing(row.get(p.key))
    ]
    if not bars:
        return
    ax.bar([x for x, _, _ in bars], [y for _, y, _ in bars], width, zorder=2, **style)
    shown = [(x, y, e) for x, y, p in bars if (e := _error(row, p, y)) is not None]
    if shown:
        ax.errorbar(
            [x for x, _, _ in shown],
            [y for _, y, _ in shown],
            yerr=[[e[0] for _, _, e in shown], [e[1] for _, _, e in shown]],
            fmt="none",
            ecolor="0.15",
            elinewidth=1,
            capsize=3,
            zorder=3,
        )


def _error(row: dict[str, Any], protocol: Protocol, value: float) -> tuple[float, float] | None:
    """(below, above) the value, in points, from the row's interval; None without one."""
    if protocol.low is None or protocol.high is None:
        return None
    low: Any = row.get(protocol.low)
    high: Any = row.get(protocol.high)
    if is_missing(low) or is_missing(high):
        return None
    return max(0.0, value - 100 * float(low)), max(0.0, 100 * float(high) - value)
