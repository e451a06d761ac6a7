"""`tlbench report`: find the result folders, read them, aggregate, render, write.

    report([Path("results/sweeps/first")], "markdown", out=Path("results/first.md"))

The CLI only parses its options and calls `report`; this is the whole command, usable from Python.
Diagnostics (skipped folders, failed sweep cells, written files) go to the stderr console; a table
without `out` goes to stdout, so `tlbench report --format csv > runs.csv` stays machine-readable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tlbench._console import console, say
from tlbench.errors import DataError, UsageError
from tlbench.options import BENCH_DIR, RUNS_DIR, SWEEPS_DIR
from tlbench.report.collect import Skipped

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PATHS = (RUNS_DIR, SWEEPS_DIR, BENCH_DIR)
"""What `report` reads when given no paths (those of them that exist)."""


def report(
    paths: Sequence[Path] | None = None,
    fmt: str = "table",
    out: Path | None = None,
    group_by: Sequence[str] | None = None,
    plots: Path | None = None,
    *,
    columns: Sequence[str] | None = None,
    wide: bool = False,
    open_page: bool = False,
) -> pd.DataFrame | None:
    """Report the runs, baselines and bench results under `paths`.

    Args:
        paths: Run, sweep or bench folders or bench files; None or empty: `DEFAULT_PATHS`.
        fmt: `table` (rich, on the terminal), `html` (the whole report as one page,
            `tlbench.report.page`) or markdown, csv, json (`tlbench.report.render`).
        out: Write the rendered report here (atomically) instead of stdout; not with `table`.
        group_by: Fields or dotted config paths that define a configuration (each item may be
            comma-separated); None: `DEFAULT_GROUP_BY`.
        plots: Write the comparison figures to this folder.
        columns: The terminal table's columns (keys, each item may be comma-separated); None:
            the compact default (`render.COMPACT`).
        wide: Every column on the terminal.
        open_page: Write the html page (to `out`, else a temporary file) and open it in a browser;
            implies html when `fmt` is the default `table`.

    Returns:
        The aggregated runs table with the interval and test columns (`stats.COLUMNS`); None when
        there are only bench results.

    Raises:
        UsageError: An unknown format, `table` with `out`, `--columns`/`--wide` off the terminal,
            `--open` with a format other than html, runs and bench rows in one csv/json, or a
            group-by or column name found nowhere.
        DataError: No finished run and no bench result under `paths`.
    """
    from tlbench.report.aggregate import aggregate
    from tlbench.report.bench import collect_bench, print_bench, render_bench
    from tlbench.report.collect import collect_runs
    from tlbench.report.plots import make_plots
    from tlbench.report.render import FORMATS, print_table, render
    from tlbench.report.stats import with_differences
    from tlbench.sweep import failed_cells, split_list

    if open_page and fmt == "table":
        fmt = "html"
    _check_options(fmt, out, columns, wide, open_page, FORMATS)
    paths = list(paths or [p for p in DEFAULT_PATHS if p.exists()])
    records, skipped = collect_runs([p for p in paths if not p.is_file()])  # bench files aside
    bench_rows, bench_skipped = collect_bench(paths)
    failed = [
        Skipped(sweep / "cells" / cell, f"sweep cell {state.status}: {state.error}")
        for sweep, cell, state in failed_cells(paths)
    ]
    skipped_all = [*skipped, *bench_skipped, *failed]
    for skip in skipped_all:
        say(("skipped", "yellow"), f" {skip.path}: {skip.reason}", soft_wrap=True)
    runs = [r for r in records if r.kind == "run"]
    if not runs and not bench_rows:
        where = ", ".join(str(p) for p in paths) or "results/"
        raise DataError(
            f"no finished runs or bench results found in {where}",
            "train with `tlbench run` or `tlbench sweep`, or measure with `tlbench bench`",
        )
    df = None
    if runs:
        df = with_differences(aggregate(records, split_list(list(group_by or [])) or None), records)
    if fmt == "table":
        if df is not None:
            print_table(df, console(), split_list(list(columns or [])) or None, wide)
        if bench_rows:
            print_bench(bench_rows, console())
    elif fmt == "html":
        from tlbench.report.page import render_page

        table = df if df is not None else with_differences(aggregate([]), [])
        bench = render_bench(bench_rows, "html") if bench_rows else ""
        _emit(render_page(records, table, skipped_all, bench), out, open_page)
    else:
        parts = [render(df, fmt)] if df is not None else []
        parts += [render_bench(bench_rows, fmt)] if bench_rows else []
        if len(parts) == 2 and fmt in ("csv", "json"):
            raise UsageError(
                "runs and bench results in one csv/json would mix two tables",
                "report them separately: tlbench report results/runs ...; tlbench report results/bench ...",
            )
        _emit("\n".join(p if p.endswith("\n") else p + "\n" for p in parts), out, False)
    if plots is not None and df is not None:
        for path in make_plots(records, df, plots):
            say(f"plot {path}")
    return df


def _check_options(
    fmt: str,
    out: Path | None,
    columns: Sequence[str] | None,
    wide: bool,
    open_page: bool,
    formats: Sequence[str],
) -> None:
    if fmt not in ("table", *formats):
        raise UsageError(f"--format {fmt!r} is not one of table, {', '.join(formats)}")
    if fmt == "table" and out is not None:
        raise UsageError(
            "--format table prints to the terminal", "use markdown, csv, json or html with --out"
        )
    if fmt != "table" and (columns or wide):
        raise UsageError("--columns and --wide choose the terminal table's columns", "drop --format")
    if open_page and fmt != "html":
        raise UsageError("--open shows the html page", "use --format html, or drop --format")


def _emit(text: str, out: Path | None, open_page: bool) -> None:
    """Write `text` to `out` (atomically) or stdout; with `open_page`, to `out` or a temporary
    .html file, then open that in the default browser."""
    from tlbench._io import write_text

    if open_page and out is None:
        import tempfile

        handle, name = tempfile.mkstemp(prefix="tlbench-report-", suffix=".html")
        os.close(handle)
        out = Path(name)
    if out is None:
        sys.stdout.write(text)
        return
    write_text(out, text)
    say(f"wrote {out}")
    if open_page:
        import webbrowser

        if not webbrowser.open(out.resolve().as_uri()):
            say(f"no browser found: open {out} yourself")
