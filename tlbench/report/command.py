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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlbench._console import console, say
from tlbench._sweepdir import failed_cells
from tlbench._util import split_list
from tlbench.errors import DataError, UsageError
from tlbench.options import BENCH_DIR, EVAL_DIR, RUNS_DIR, SWEEPS_DIR
from tlbench.report.collect import RunRecord, Skipped

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PATHS = (RUNS_DIR, SWEEPS_DIR, BENCH_DIR, EVAL_DIR)
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
    """Report the runs, baselines, bench results and `tlbench eval` folders under `paths`.

    Args:
        paths: Run, sweep or bench folders or bench files; None or empty: `DEFAULT_PATHS`.
        fmt: `table` (rich, on the terminal), `html` (the whole report as one page,
            `tlbench.report.page`) or markdown, csv, json (`tlbench.report.render`).
        out: Write the rendered report here (atomically) instead of stdout; not with `table`.
        group_by: Fields or dotted config paths that define a configuration (each item may be
            comma-separated); None: `DEFAULT_GROUP_BY`.
        plots: Write the comparison figures to this folder.
        columns: The terminal table's columns (keys, each item may be comma-separated); None:
            the compact default (`columns.COMPACT`).
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
    from tlbench.report.render import FORMATS

    if open_page and fmt == "table":
        fmt = "html"
    _check_options(fmt, out, columns, wide, open_page, FORMATS)
    paths = list(paths or [p for p in DEFAULT_PATHS if p.exists()])
    found = _collect(paths)
    df = _runs_table(found.records, group_by) if found.runs else None
    if fmt == "table":
        _print(df, found.bench_rows, split_list(list(columns or [])) or None, wide)
        if found.eval_rows:
            from tlbench.report.protocols import print_protocols

            print_protocols(found.eval_rows, console())
    elif fmt == "html":
        _emit(_page(df, found), out, open_page)
    else:
        _emit(_text(df, found.bench_rows, fmt, found.eval_rows), out, False)
    if plots is not None and df is not None:
        from tlbench.report.plots import make_plots

        for path in make_plots(found.records, df, plots):
            say(f"plot {path}")
    return df


@dataclass(frozen=True)
class _Found:
    """What the paths hold: run and baseline records, bench rows, and every folder skipped (with why).

    Attributes:
        records: From `collect_runs`.
        bench_rows: From `collect_bench`.
        skipped: Run folders and bench files that could not be read, and the failed sweep cells.
        eval_rows: From `collect_eval`, with the fine-tune top-1 of the runs beside them.
    """

    records: list[RunRecord]
    bench_rows: list[dict[str, Any]]
    skipped: list[Skipped]
    eval_rows: list[dict[str, Any]]

    @property
    def runs(self) -> list[RunRecord]:
        return [r for r in self.records if r.kind == "run"]


def _collect(paths: list[Path]) -> _Found:
    """Read every run, baseline, bench result and failed sweep cell under `paths`; name each skip.

    Raises:
        DataError: No finished run and no bench result under `paths`.
    """
    from tlbench.report.bench import collect_bench
    from tlbench.report.collect import collect_runs
    from tlbench.report.protocols import collect_eval, with_finetune

    records, skipped = collect_runs([p for p in paths if not p.is_file()])  # bench files aside
    bench_rows, bench_skipped = collect_bench(paths)
    eval_rows, eval_skipped = collect_eval(paths)
    failed = [
        Skipped(sweep / "cells" / cell, f"sweep cell {state.status}: {state.error}")
        for sweep, cell, state in failed_cells(paths)
    ]
    found = _Found(
        records,
        bench_rows,
        [*skipped, *bench_skipped, *eval_skipped, *failed],
        with_finetune(eval_rows, records),
    )
    for skip in found.skipped:
        say(("skipped", "yellow"), f" {skip.path}: {skip.reason}", soft_wrap=True)
    if not found.runs and not bench_rows and not eval_rows:
        where = ", ".join(str(p) for p in paths) or "results/"
        raise DataError(
            f"no finished runs or bench results found in {where} (nor tlbench eval folders)",
            "train with `tlbench run` or `tlbench sweep`, measure with `tlbench bench`, or `tlbench eval`",
        )
    return found


def _runs_table(records: list[RunRecord], group_by: Sequence[str] | None) -> pd.DataFrame:
    """One row per configuration (`aggregate`), with the interval and test columns (`with_differences`)
    and a tuned or raced sweep's `tuned`, `tuning` and `race` (`tuning.annotate`). Cells a race
    stopped are rows of their own, after the others; tuning trials are no rows."""
    import pandas as pd

    from tlbench.report.aggregate import aggregate
    from tlbench.report.stats import with_differences
    from tlbench.report.tuning import annotate, split_records

    rows, stopped, _trials = split_records(records)
    keys = split_list(list(group_by or [])) or None
    df = annotate(with_differences(aggregate(rows, keys), rows), rows)
    if not stopped:
        return df
    baselines = [r for r in rows if r.kind == "baseline"]
    raced = annotate(aggregate([*stopped, *baselines], keys), stopped)
    return pd.concat([df, raced], ignore_index=True)


def _print(
    df: pd.DataFrame | None, bench_rows: list[dict[str, Any]], columns: list[str] | None, wide: bool
) -> None:
    """The terminal tables: runs, then bench results."""
    from tlbench.report.bench import print_bench
    from tlbench.report.render import print_table

    if df is not None:
        print_table(df, console(), columns, wide)
    if bench_rows:
        print_bench(bench_rows, console())


def _page(df: pd.DataFrame | None, found: _Found) -> str:
    """The whole report as one html page (an empty runs table when there are only bench results)."""
    from tlbench.report.aggregate import aggregate
    from tlbench.report.bench import render_bench
    from tlbench.report.page import render_page
    from tlbench.report.stats import with_differences

    table = df if df is not None else with_differences(aggregate([]), [])
    bench = render_bench(found.bench_rows, "html") if found.bench_rows else ""
    protocols = ""
    if found.eval_rows:
        from tlbench.report.protocols import render_protocols

        protocols = render_protocols(found.eval_rows, "html")
    return render_page(found.records, table, found.skipped, bench, protocols, found.eval_rows)


def _text(
    df: pd.DataFrame | None, bench_rows: list[dict[str, Any]], fmt: str, eval_rows: list[dict[str, Any]]
) -> str:
    """markdown, csv or json: the runs table, the bench table, the protocols table. A csv holds one
    table; a json of several is an object of them (`runs`, `bench`, `protocols`: each the list that
    json of that table alone is), e.g. a sweep's runs and its `--protocols` evaluation.

    Raises:
        UsageError: More than one of them, in csv.
    """
    import json

    from tlbench.report.bench import render_bench
    from tlbench.report.protocols import render_protocols
    from tlbench.report.render import render

    named = [("runs", render(df, fmt))] if df is not None else []
    named += [("bench", render_bench(bench_rows, fmt))] if bench_rows else []
    named += [("protocols", render_protocols(eval_rows, fmt))] if eval_rows else []
    parts = [text for _, text in named]
    if len(parts) > 1 and fmt == "csv":
        raise UsageError(
            "runs, bench results and evaluations in one csv would mix tables",
            "use --format json (an object of the tables), or report them separately: "
            "tlbench report results/runs ...; tlbench report results/eval ...",
        )
    if len(parts) > 1 and fmt == "json":
        parts = [json.dumps({name: json.loads(text) for name, text in named}, indent=2)]
    return "\n".join(p if p.endswith("\n") else p + "\n" for p in parts)


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
    say(f"wrote {out}", soft_wrap=True)  # a path to copy: never wrapped
    if open_page:
        import webbrowser

        if not webbrowser.open(out.resolve().as_uri()):
            say(f"no browser found: open {out} yourself")
