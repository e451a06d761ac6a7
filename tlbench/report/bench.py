"""Throughput tables from `tlbench bench` result files (`results/bench/*.json`), for `tlbench report`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tlbench._util import is_missing
from tlbench.report.collect import Skipped, read_documents
from tlbench.report.markup import render_rows

BENCH_FORMAT = "tlbench-bench/"
# (row key, column title, kind) in display order; kind picks the cell format
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "backbone", "text"),
    ("freeze", "freeze", "text"),
    ("device_name", "device", "text"),
    ("precision", "precision", "text"),
    ("memory_format", "layout", "text"),
    ("compiled", "compiled", "text"),
    ("image_size", "px", "text"),
    ("train_batch_size", "train batch", "int"),
    ("train_samples_per_sec", "train img/s", "rate"),
    ("train_step_time", "train ms", "ms"),
    ("train_gflops", "train GFLOP/img", "num"),
    ("train_mfu", "train MFU", "pct"),
    ("train_vs_baseline", "vs plain loop", "ratio"),
    ("infer_batch_size", "infer batch", "int"),
    ("infer_samples_per_sec", "infer img/s", "rate"),
    ("infer_mfu", "infer MFU", "pct"),
    ("bound", "bound by", "text"),
    ("train_peak_mem_mb", "peak MiB", "int"),
    ("status", "status", "text"),
)


def collect_bench(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """Every row of every bench JSON file under `paths` (files or folders); bad files are skipped."""
    rows: list[dict[str, Any]] = []
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".json":
            files.append(p)
        elif p.is_dir():
            files += sorted(f for f in p.rglob("*.json") if "bench" in f.parts[-2] or "bench" in f.name)
    documents, skipped = read_documents(files, BENCH_FORMAT, "bench")
    for f, doc in documents:
        rows += [{**row, "source": str(f)} for row in doc.get("rows", [])]
    return rows, skipped


def _cell(value: Any, kind: str) -> str:
    if is_missing(value) or value == "":
        return "-"
    if kind == "rate":
        return f"{float(value):,.0f}"
    if kind == "ms":
        return f"{float(value):,.1f}"
    if kind == "num":
        return f"{float(value):,.2f}"
    if kind == "pct":
        return f"{100 * float(value):.1f} %"
    if kind == "ratio":
        return f"{float(value):.2f}x"
    if kind == "int":
        return f"{float(value):,.0f}"
    return str(value)


def bench_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Column titles and human cells, only for columns some row has a value in."""
    used = [c for c in COLUMNS if any(r.get(c[0]) not in (None, "") for r in rows)]
    return [title for _, title, _ in used], [[_cell(r.get(k), kind) for k, _, kind in used] for r in rows]


def render_bench(rows: list[dict[str, Any]], fmt: str) -> str:
    """markdown / html: the human table; csv / json: every raw field of every row."""
    return render_rows(rows, fmt, bench_table)


def print_bench(rows: list[dict[str, Any]], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    titles, cells = bench_table(rows)
    table = Table(title=f"throughput ({len(rows)} bench row(s))", title_justify="left")
    for t in titles:
        table.add_column(t, justify="left" if t in ("backbone", "freeze", "device", "status") else "right")
    for row in cells:
        table.add_row(*map(Text, row))  # names and devices are user text, never markup
    console.print(table)
    console.print(
        "MFU: FLOPs per image x images/s / the device's dense peak; vs plain loop: tlbench's step "
        "against a hand-written loop doing the same work (1.00x = as fast)."
    )
