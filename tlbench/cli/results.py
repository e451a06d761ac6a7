"""`tlbench report` and `tlbench bench`: compare finished runs, and measure throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlbench import options
from tlbench.cli._common import AMP_HELP, ChannelsLastOpt, CompileOpt, one_of
from tlbench.options import BenchMode


def bench(
    backbones: Annotated[str, typer.Argument(help="One or more timm names, comma-separated.")],
    freeze: Annotated[
        str, typer.Option(help="Freeze spec of the recipe's model (N, P%, none, all).")
    ] = "none",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch to try first (halved on OOM).")] = 64,
    image_size: Annotated[int, typer.Option("--image-size")] = 224,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[str, typer.Option(help=AMP_HELP)] = "auto",
    channels_last: ChannelsLastOpt = "auto",
    compile: CompileOpt = "auto",
    mode: Annotated[str, typer.Option(help=f"{one_of(BenchMode)}.")] = "both",
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps.")] = 3,
    steps: Annotated[int, typer.Option(help="Timed steps per repeat.")] = 10,
    repeats: Annotated[int, typer.Option(help="Repeats; the median is reported.")] = 3,
    data: Annotated[
        str | None, typer.Option(help="Also time the real input pipeline on this data (or synthetic[...]).")
    ] = None,
    recipe: Annotated[str, typer.Option(help="The recipe whose model, loss and optimizer are timed.")] = (
        options.DEFAULT_RECIPE
    ),
    baseline_loop: Annotated[
        bool, typer.Option("--baseline-loop/--no-baseline-loop", help="Also time a plain PyTorch loop.")
    ] = True,
    nproc: Annotated[
        int,
        typer.Option(help="Also time the train step under DDP on N ranks (batch per rank) against 1 rank."),
    ] = 1,
    ddp_timeout: Annotated[
        float, typer.Option("--ddp-timeout", help="Seconds a rank waits in a collective before it fails.")
    ] = 300.0,
    json_out: Annotated[bool, typer.Option("--json", help="Rows as JSON on stdout.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Output .csv/.json or folder (default results/bench/).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train and inference throughput: synthetic input on the device, after warm-up, one process each."""
    from tlbench.bench import BenchOptions
    from tlbench.bench.runner import run_bench_command

    settings = BenchOptions(
        freeze=freeze,
        batch_size=batch_size,
        image_size=image_size,
        device=device,
        amp=amp,  # type: ignore[arg-type]  # checked by BenchOptions
        channels_last=channels_last,  # type: ignore[arg-type]
        compile=compile,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        warmup=warmup,
        steps=steps,
        repeats=repeats,
        data=data,
        recipe=recipe,
        baseline_loop=baseline_loop,
        out=str(out) if out else None,
        nproc=nproc,
        ddp_timeout=ddp_timeout,
    )
    code = run_bench_command(backbones, settings, as_json=json_out, quiet=quiet)
    if code:
        raise typer.Exit(code)


def report(
    dirs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run, sweep or bench folders or files (default: results/runs, sweeps, bench)."),
    ] = None,
    format: Annotated[
        str,
        typer.Option("--format", help="table, markdown, csv, json or html (the whole report as one page)."),
    ] = "table",
    out: Annotated[Path | None, typer.Option(help="Write the report to this file instead of stdout.")] = None,
    group_by: Annotated[
        list[str] | None,
        typer.Option("--group-by", help="Group on these fields (comma-separated or repeated)."),
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Write the comparison plots to this folder.")] = None,
    columns: Annotated[
        list[str] | None,
        typer.Option(
            "--columns",
            help="Terminal table columns (comma-separated or repeated): mark, backbone, recipe, freeze, "
            "top1, ci, vs_best, p, baseline, train_ips, wall, top5, final, loss, epochs, params, leakage, "
            "infer_ips, memory, device, pool, normalize, augment, image_size, weights_source, dataset, "
            "class_list_hash, or a --group-by name.",
        ),
    ] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Every column on the terminal.")] = False,
    open_page: Annotated[
        bool, typer.Option("--open", help="Write the html page (--out, else a temporary file) and open it.")
    ] = False,
) -> None:
    """One row per configuration, seeds aggregated as mean +- std (n), beside the zero-training baseline,
    with a 95% interval and a paired test against the best."""
    from tlbench.report.command import report as report_command

    report_command(dirs, format, out, group_by, plots, columns=columns, wide=wide, open_page=open_page)
