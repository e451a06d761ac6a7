"""Run the benchmark: one child process per backbone, rows collected, CSV + JSON written.

A crash, hang-up or out-of-memory in one backbone's process never kills or skews the others: its
row says `status: failed` with the `error`, and the next backbone starts in a fresh process (a
fresh CUDA context, an empty allocator, no compile caches of the previous model).

Files: `results/bench/<time>-<device>-<precision>-<layout>-<eager|compile>.{csv,json}` (or what
`--out` says); the torch / timm / CUDA versions are fields of every row. Both files are written
atomically; the JSON holds the options too.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tlbench._console import console, plain, say
from tlbench._io import check_writable, write_json, write_text
from tlbench.bench import BenchOptions, parse_backbones
from tlbench.errors import OutputError, UsageError

FORMAT = "tlbench-bench/1"
DEFAULT_DIR = Path("results") / "bench"
STDERR_TAIL = 2000  # characters of a failed child's stderr kept in its row


def preflight(backbones: list[str], options: BenchOptions) -> None:
    """Catch user mistakes before any process starts (the options checked themselves when built).

    Raises:
        UsageError: No backbone, or an unknown recipe.
        ModelError: A backbone timm does not know (with the closest names).
        DeviceError: CUDA asked for but not available, or fewer GPUs than `--nproc`.
    """
    if not backbones:
        raise UsageError("no backbone given", "e.g. tlbench bench vgg19,resnet50")
    from tlbench.config import get_recipe
    from tlbench.models.backbone import check_backbone
    from tlbench.runtime import resolve_amp, resolve_device

    get_recipe(options.recipe)
    resolve_amp(options.amp, resolve_device(options.device))
    if options.nproc > 1:
        from tlbench.bench.ddp import check_ranks

        check_ranks(options)
    for name in backbones:
        check_backbone(name)


def output_paths(options: BenchOptions, rows: list[dict[str, Any]], now: datetime) -> tuple[Path, Path]:
    """Where the CSV and the JSON go.

    `out` ending in `.csv` or `.json` names the files (both are written, side by side); any other
    `out` is a folder; None is `results/bench/`. A name made here carries the time, the device,
    the precision, the memory layout and the compile mode.
    """
    if options.out is not None:
        out = Path(options.out)
        if out.suffix.lower() in (".csv", ".json"):
            return out.with_suffix(".csv"), out.with_suffix(".json")
        folder = out
    else:
        folder = DEFAULT_DIR
    ok = [r for r in rows if r.get("status") == "ok"]
    first = ok[0] if ok else {}
    device = first.get("device_name") if str(first.get("device", "")).startswith("cuda") else None
    device = device or str(first.get("device") or options.device).split(":")[0]
    precision = first.get("precision") or options.amp
    layout = {"channels_last": "nhwc", "contiguous": "nchw"}.get(first.get("memory_format", ""), "nchw")
    compiled = "compile" if first.get("compile") else "eager"
    name = f"{now:%Y%m%d-%H%M%S}-{_slug(device)}-{precision}-{layout}-{compiled}"
    return folder / f"{name}.csv", folder / f"{name}.json"


def check_output(options: BenchOptions) -> None:
    """Prove, before anything is measured, that the results can be written where `--out` says.

    Raises:
        OutputError: A `.csv`/`.json` name that is a folder (or anything but a file), a folder name
            that is a file, or a folder that cannot be written to.
    """
    csv_path, json_path = output_paths(options, [], datetime.now())
    for path in dict.fromkeys((csv_path, json_path)):
        if path.exists() and not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file"
            raise OutputError(
                f"--out {path} is {what}, where the results file goes",
                "give a new file name ending in .csv or .json, or a folder name without one",
            )
    folder = csv_path.parent
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"--out {folder} is a file, not a folder", "give a folder, or a name ending in .csv"
        )
    check_writable(folder)


def _slug(text: str) -> str:
    text = re.sub(r"^nvidia\s+", "", text.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def run_child(backbone: str, options: BenchOptions) -> dict[str, Any]:
    """Measure one backbone in a fresh Python process and return its row (failed rows included)."""
    payload = json.dumps({"backbone": backbone, **options.to_dict()})
    cmd = [sys.executable, "-m", "tlbench.bench.worker", payload]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    row = _last_json_line(proc.stdout)
    if row is None:
        tail = proc.stderr.strip()[-STDERR_TAIL:]
        last = tail.splitlines()[-1] if tail else ""
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        row = {
            "model": backbone,
            "status": "failed",
            "error": f"worker process died ({how}) without a result" + (f": {last}" if last else ""),
            "error_type": "WorkerDied",
            "exit_code": 1,
            "stderr_tail": tail,
        }
    elif row.get("status") != "ok":
        row["stderr_tail"] = proc.stderr.strip()[-STDERR_TAIL:] or None
    return row


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _with_settings(row: dict[str, Any], options: BenchOptions) -> dict[str, Any]:
    """A failed row gets the requested settings too, so every CSV line says what was asked for."""
    if row.get("status") == "ok":
        return row
    settings = {k: v for k, v in options.to_dict().items() if k not in ("out",)}
    return {"model": row.get("model"), "status": row.get("status"), **settings, **row}


def run_bench(
    backbones: list[str],
    options: BenchOptions,
    progress: bool = True,
    show: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark each backbone in its own process; write CSV + JSON; return the rows.

    The output is checked before the first backbone is measured (`check_output`); the rows are
    shown (`show`) before the files are written, so a write that fails all the same (a full disk)
    never loses a measurement. Rows measured before Ctrl-C are shown and written too.

    Args:
        backbones: timm names, measured one after the other (never in parallel: they would share
            the device and skew each other).
        options: The settings, the same for every backbone.
        progress: Show which backbone runs and each result on stderr.
        show: Called with the rows (their `csv` and `json` fields set) before the files are written.

    Returns:
        One row per backbone, in order; a backbone that failed has `status: failed` and `error`.
        The paths written are in each row's `csv` and `json` fields.

    Raises:
        TlbenchError: A mistake found before anything runs (see `preflight`), or an unwritable
            output folder.
    """
    preflight(backbones, options)
    check_output(options)
    now = datetime.now()
    out = console()
    rows: list[dict[str, Any]] = []
    try:
        for i, backbone in enumerate(backbones, 1):
            label = f"bench {i}/{len(backbones)}: {backbone} (freeze {options.freeze})"
            if progress:
                with out.status(plain(label)):
                    row = run_child(backbone, options)
                out.print(_one_line(row, label))
            else:
                row = run_child(backbone, options)
            rows.append(_with_settings(row, options))
    finally:  # partial results survive Ctrl-C
        if rows:
            _save(rows, options, now, progress, show)
    return rows


def _save(
    rows: list[dict[str, Any]],
    options: BenchOptions,
    now: datetime,
    progress: bool,
    show: Callable[[list[dict[str, Any]]], None] | None,
) -> None:
    """Show the rows, then write them; a failed write says the rows were shown."""
    csv_path, json_path = output_paths(options, rows, now)
    for row in rows:
        row["csv"], row["json"] = str(csv_path), str(json_path)
    if show is not None:
        show(rows)
    try:
        write_results(rows, options, csv_path, json_path)
    except OutputError as exc:
        if show is not None:
            exc.message = f"{exc.message.rstrip('.')} (the {len(rows)} measured row(s) are printed above)"
        raise
    if progress:
        say(f"wrote {csv_path} and {json_path}")


def run_bench_command(
    backbones: str | list[str], options: BenchOptions, *, as_json: bool, quiet: bool
) -> int:
    """What `tlbench bench BACKBONE[,BACKBONE...] [options]` does; returns its exit status.

    Runs every backbone in its own process, writes CSV + JSON, and shows a table on stderr (or
    prints the rows as JSON on stdout with `as_json`).

    Args:
        backbones: timm names, as a list or comma-separated (`"vgg19,resnet50"`).
        options: The settings, the same for every backbone.
        as_json: Print the rows as JSON on stdout instead of the table.
        quiet: No progress display.

    Returns:
        0 when every backbone was measured; otherwise the exit code of the first failure (e.g. 5
        for a model problem, see `tlbench.errors`), or 1 when it was not a tlbench error.

    Raises:
        TlbenchError: A user mistake found before anything runs (unknown backbone, CUDA asked for
            but absent, unwritable output).
    """
    shown: list[dict[str, Any]] = []

    def show(rows: list[dict[str, Any]]) -> None:
        shown[:] = rows
        if as_json:
            sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        else:
            print_table(rows)

    try:
        rows = run_bench(parse_backbones(backbones), options, progress=not quiet, show=show)
    except OutputError:
        if shown and not as_json:  # the table may cut numbers short: every field, as JSON on stdout
            sys.stdout.write(json.dumps(shown, indent=2, default=str) + "\n")
        raise
    failed = [r for r in rows if r.get("status") != "ok"]
    if not failed:
        return 0
    code = failed[0].get("exit_code")
    return int(code) if isinstance(code, int) and code > 0 else 1


def _one_line(row: dict[str, Any], label: str) -> Any:
    """A backbone's result as a `rich.text.Text` (names and errors are user text, not markup)."""
    from rich.text import Text

    if row.get("status") != "ok":
        return Text.assemble(f"{label}: ", ("failed", "red"), f": {row.get('error')}")
    parts = []
    if row.get("train_samples_per_sec"):
        parts.append(f"train {row['train_samples_per_sec']:,.1f} img/s (batch {row['train_batch_size']})")
    if row.get("infer_samples_per_sec"):
        parts.append(f"infer {row['infer_samples_per_sec']:,.1f} img/s (batch {row['infer_batch_size']})")
    if row.get("scaling_efficiency") is not None:
        parts.append(_scaling_text(row))
    line = Text(f"{label}: " + ", ".join(parts))
    for warning in row.get("warnings") or []:
        line.append_text(Text.assemble("\n  ", ("warning", "yellow"), f": {warning}"))
    return line


def _scaling_text(row: dict[str, Any]) -> str:
    """`2 ranks (gloo, batch 4 per rank) 113.3 img/s, 1 rank 139.3 img/s: scaling efficiency 0.41`."""
    return (
        f"{row['nproc']} ranks ({row['ddp_backend']}, batch {row['ddp_batch_size']} per rank) "
        f"{row['ddp_samples_per_sec']:,.1f} img/s, 1 rank {row['ddp_single_samples_per_sec']:,.1f} img/s: "
        f"scaling efficiency {row['scaling_efficiency']:.2f}"
    )


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of every row, in first-seen order, measured rows first."""
    ordered = sorted(rows, key=lambda r: r.get("status") != "ok")
    keys: dict[str, None] = {}
    for row in ordered:
        keys.update(dict.fromkeys(row))
    return list(keys)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_results(rows: list[dict[str, Any]], options: BenchOptions, csv_path: Path, json_path: Path) -> None:
    """Write the rows as CSV and as JSON (with the options), each atomically."""
    cols = columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in cols})
    write_text(csv_path, buffer.getvalue())
    write_json(
        json_path,
        {
            "format": FORMAT,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
            "options": options.to_dict(),
            "rows": rows,
        },
    )


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows as a rich table on stderr (the scaling columns only when some row ran `--nproc`)."""
    from rich.table import Table

    cols = [
        ("backbone", "left"),
        ("freeze", "left"),
        ("batch tr/inf", "right"),
        ("train img/s", "right"),
        ("train ms", "right"),
        ("vs plain loop", "right"),
        ("infer img/s", "right"),
        ("GFLOP/img tr/inf", "right"),
        ("MFU tr/inf", "right"),
        ("peak MiB", "right"),
    ]
    scaling = any((r.get("nproc") or 1) > 1 for r in rows)
    if scaling:
        cols += [("ranks", "right"), ("DDP img/s", "right"), ("DDP ms", "right"), ("scaling", "right")]
    table = Table(title="tlbench bench", title_justify="left")
    for name, justify in [*cols, ("status", "left")]:
        table.add_column(name, justify=justify, no_wrap=name == "backbone")  # type: ignore[arg-type]
    settings = ""
    for row in rows:
        if row.get("status") != "ok":
            dashes = ["-"] * (len(cols) - 2)
            table.add_row(
                plain(row.get("model")), plain(row.get("freeze", "")), *dashes, plain("failed", "red")
            )
            continue
        settings = (
            f"{row.get('device_name')} ({row.get('device')}), {row.get('precision')} "
            f"({row.get('amp_why')}), "
            f"{row.get('memory_format')}, {'compiled' if row.get('compiled') else 'eager'}, "
            f"{row.get('image_size')} px, torch {row.get('torch')}"
        )
        mem = max(
            (m for m in (row.get("train_peak_mem_mb"), row.get("infer_peak_mem_mb")) if m), default=None
        )
        cells = [
            plain(row.get("model")),
            plain(row.get("freeze")),
            f"{row.get('train_batch_size') or '-'}/{row.get('infer_batch_size') or '-'}",
            _fmt(row.get("train_samples_per_sec"), ",.1f"),
            _fmt(row.get("train_step_ms"), ",.1f"),
            _fmt(row.get("train_vs_baseline"), ".2f") + ("x" if row.get("train_vs_baseline") else ""),
            _fmt(row.get("infer_samples_per_sec"), ",.1f"),
            f"{_fmt(row.get('train_gflops'), '.1f')}/{_fmt(row.get('infer_gflops'), '.1f')}",
            f"{_fmt(row.get('train_mfu'), '.0%')}/{_fmt(row.get('infer_mfu'), '.0%')}",
            _fmt(mem, ",.0f"),
        ]
        if scaling:
            ddp = row.get("ddp_samples_per_sec") is not None
            cells += [
                f"{row.get('nproc')} {row.get('ddp_backend')}" if ddp else "-",
                _fmt(row.get("ddp_samples_per_sec"), ",.1f"),
                _fmt(row.get("ddp_step_ms"), ",.1f"),
                _fmt(row.get("scaling_efficiency"), ".2f"),
            ]
        table.add_row(*cells, "ok")
    if settings:
        table.caption = plain(settings)
    console().print(table)
    for row in rows:
        if row.get("status") != "ok":
            say((f"{row.get('model')} failed", "red"), f": {row.get('error')}")
        if row.get("pipeline_samples_per_sec"):
            say(
                f"{row['model']}: data pipeline alone {row['data_samples_per_sec']:,.0f} img/s, "
                f"train step alone {row['train_samples_per_sec']:,.0f} img/s, together "
                f"{row['pipeline_samples_per_sec']:,.0f} img/s ({row['pipeline_vs_step']:.0%} of the step): "
                f"{row['bound']}-bound"
            )
        if row.get("scaling_efficiency") is not None:
            say(f"{row['model']}: {_scaling_text(row)}")
