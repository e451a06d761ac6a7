"""The protocols table from `tlbench eval` folders (`eval.json`), for `tlbench report`.

One row per (evaluation folder, backbone): fine-tune top-1 where runs of that backbone were reported
beside it (the best final validation top-1 among them), linear probe and k-NN top-1 with their
bootstrap intervals, few-shot accuracies (prototype head) with their t-intervals, extraction
throughput and the leakage flag. markdown and html show that table; csv and json carry every raw
field of every row. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tlbench._util import is_missing
from tlbench.report.collect import RunRecord, Skipped, read_documents
from tlbench.report.markup import render_rows

EVAL_FORMAT = "tlbench-eval/"
EVAL_FILE = "eval.json"
_SETTING = re.compile(r"fewshot_(?P<ways>\d+)w(?P<shots>\d+)s_prototype")


def collect_eval(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """Every backbone row of every eval.json under `paths` (files or folders); damaged ones skipped."""
    rows: list[dict[str, Any]] = []
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == EVAL_FILE:
            files.append(p)
        elif p.is_dir():
            files += sorted(p.rglob(EVAL_FILE))
    documents, skipped = read_documents(files, EVAL_FORMAT, "eval")
    for f, doc in documents:
        context = {
            "eval": str(f.parent),
            "episodes_fingerprint": doc.get("episodes_fingerprint"),
            "fewshot_pool": doc.get("fewshot_pool"),
        }
        rows += [{**row, **context} for row in doc.get("rows", [])]
    return rows, skipped


def with_finetune(rows: list[dict[str, Any]], records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Each row with `finetune_top1`: the best final top-1 of the runs of its backbone (None without).

    Only the runs that are rows of the runs table count: not a sweep's tuning trials (the best of
    many draws, and trained without the selection split) nor the cells a race stopped early.
    """
    best: dict[str, float] = {}
    for r in records:
        if (
            r.kind == "run"
            and r.trial is None
            and r.status != "stopped_early"
            and not is_missing(r.final_val_top1)
        ):
            best[r.backbone] = max(best.get(r.backbone, 0.0), float(r.final_val_top1))
    return [{**row, "finetune_top1": best.get(row["backbone"])} for row in rows]


def _interval(row: dict[str, Any], key: str, low: str, high: str) -> str:
    value: Any = row.get(key)
    if is_missing(value):
        return "-"
    if is_missing(row.get(low)) or is_missing(row.get(high)):
        return f"{100 * value:.2f}"
    half = (row[high] - row[low]) / 2
    return (
        f"{100 * value:.2f} [{100 * row[low]:.2f}, {100 * row[high]:.2f}]" if half else f"{100 * value:.2f}"
    )


def fewshot_settings(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(row key, title) of each few-shot setting any row has (prototype head), e.g. 5-way 1-shot."""
    found = {
        (int(m["ways"]), int(m["shots"])): m.group(0)
        for r in rows
        for m in map(_SETTING.fullmatch, r)
        if m is not None
    }
    return [(found[w, k], f"{w}-way {k}-shot") for w, k in sorted(found)]


def protocols_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Titles and human cells (accuracies in %, with their 95 % intervals)."""
    settings = fewshot_settings(rows)
    titles = ["backbone", "fine-tune top-1", "linear", "k-NN", *(t for _, t in settings), "extract img/s"]
    titles.append("leakage")
    cells = []
    for r in rows:
        ft: Any = r.get("finetune_top1")
        cells.append([
            str(r["backbone"]),
            "-" if is_missing(ft) else f"{100 * ft:.2f}",
            _interval(r, "linear_top1", "linear_low", "linear_high"),
            _interval(r, "knn_top1", "knn_low", "knn_high"),
            *(_interval(r, k, f"{k}_low", f"{k}_high") for k, _ in settings),
            "-" if is_missing(r.get("extract_images_per_sec")) else f"{r['extract_images_per_sec']:,.0f}",
            str(r.get("leakage", "-")),
        ])  # fmt: skip
    return titles, cells


NOTE = (
    "linear and k-NN: validation top-1 with a 95 % bootstrap interval over images; few-shot: mean "
    "accuracy of the prototype head over the episodes with a 95 % t-interval (the logistic-regression "
    "head and the paired comparisons are in each folder's eval.json). Leakage: what the weights' "
    "pretraining saw of these images and classes (docs/eval.md)."
)


def render_protocols(rows: list[dict[str, Any]], fmt: str) -> str:
    """markdown / html: the human table and its note; csv / json: every raw field of every row."""
    return render_rows(rows, fmt, protocols_table, NOTE)


def print_protocols(rows: list[dict[str, Any]], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    titles, cells = protocols_table(rows)
    table = Table(title=f"frozen-feature protocols ({len(rows)} backbone row(s))", title_justify="left")
    for t in titles:
        table.add_column(t, justify="left" if t in ("backbone", "leakage") else "right")
    for row in cells:
        table.add_row(*map(Text, row))
    console.print(table)
    pools = {str(r["fewshot_pool"]) for r in rows if r.get("fewshot_pool")}
    for pool in sorted(pools):
        console.print(Text(f"few-shot episodes from {pool}"))
    console.print(Text(NOTE))
