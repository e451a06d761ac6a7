"""The `tlbench` command line.

Importing this module stays cheap (no torch, no numpy) so that `tlbench --help` is instant; every
command imports what it needs when it runs. User mistakes raise `tlbench.errors.TlbenchError`,
which `main` prints as one line with its documented exit code. Each command parses its options,
calls one function of the package and prints the result; a value out of its choices or bounds is
found where the config is built (`tlbench.options`) and named here by its flag.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tlbench import options
from tlbench.errors import ConfigError, UsageError, run_entry_point
from tlbench.options import AmpMode, Augment, BenchMode, Interpolation, Normalize, Placement, Pool
from tlbench.train.config import DataFormat

app = typer.Typer(
    name="tlbench",
    help="Transfer-learning benchmarks on mini-ImageNet: the Keras VGG19 recipe on any timm backbone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Create, check and fetch mini-ImageNet data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _one_of(literal: Any) -> str:
    """`"auto, bf16, fp16 or off"`: the choices of a `tlbench.options` type, for help texts."""
    *rest, last = options.choices(literal)
    return f"{', '.join(rest)} or {last}" if rest else last


_DATA_FORMATS = _one_of(DataFormat)
_AMP_HELP = f"{_one_of(AmpMode)}; auto is bf16 on CUDA, off on the CPU."

DataFormatOpt = Annotated[
    str | None,
    typer.Option("--data-format", help=f"Force a layout instead of detecting it: {_DATA_FORMATS}."),
]


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be empty).")],
    format: Annotated[str, typer.Option("--format", help=f"{_DATA_FORMATS}.")] = "imagefolder",
    classes: Annotated[int, typer.Option(help="Number of classes (the first N standard wnids).")] = 100,
    per_class: Annotated[
        int, typer.Option("--per-class", help="Images per class, all splits together.")
    ] = 600,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 84,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same images.")] = 0,
) -> None:
    """Write a synthetic mini-ImageNet in a real on-disk layout, with the real wnids as class names."""
    from tlbench._console import console
    from tlbench.data.synth import write_synthetic

    path = write_synthetic(out, format, classes, per_class, size, seed, progress=True)
    console().print(
        f"wrote {classes} classes x {per_class} images ({format}, {size}px, seed {seed}) to {path}"
    )


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="The data folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    data_format: DataFormatOpt = None,
) -> None:
    """Report the layout, classes, splits, image sizes and corrupt files. Exit 4 when unusable."""
    from tlbench._console import console
    from tlbench.data.check import check_data

    report = check_data(path, data_format, progress=not json_out)
    if json_out:
        _print_json(report)
    else:
        _print_check(report)
    if not report["usable"]:
        if not json_out:
            console().print(f"[red]not usable:[/] {'; '.join(report['problems'])}")
        raise typer.Exit(4)


def _print_check(report: dict) -> None:
    from rich.table import Table

    from tlbench._console import console

    table = Table(title=f"{report['path']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    standard = (
        "yes" if report["standard_mini_imagenet"] else "[yellow]no: not the standard mini-ImageNet 100[/]"
    )
    rows = [
        ("format", report["format"]),
        ("classes", f"{report['num_classes']} (standard 100: {standard})"),
        ("class-list hash", report["class_list_hash"]),
        ("images", str(report["images"])),
        ("source splits", ", ".join(f"{k} {v}" for k, v in report["source_splits"].items())),
        ("100-way split", report["split_rule"]),
        ("images per class", f"{report['images_per_class']['min']} - {report['images_per_class']['max']}"),
        (
            "image size (w x h)",
            "{} x {} - {} x {}".format(*report["image_size"]["min"], *report["image_size"]["max"]),
        ),
        ("corrupt", str(len(report["corrupt"]))),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)
    for note in report["notes"]:
        console().print(f"note: {note}")
    for bad in report["corrupt"]:
        console().print(f"[red]corrupt:[/] {bad['ref']}  ({bad['error']})")


@data_app.command("download")
def data_download(
    dest: Annotated[
        Path | None, typer.Option(help="Target folder (default: $TLBENCH_DATA/mini-imagenet).")
    ] = None,
) -> None:
    """Fetch timm/mini-imagenet (parquet, 100 classes, 500/100/50 per class) from the Hugging Face Hub."""
    from tlbench._console import console
    from tlbench.data.download import download

    target = download(dest)
    console().print(f"downloaded to {target}; check it with: tlbench data check {target}")


@app.command("run")
def run(
    ctx: typer.Context,
    backbone: Annotated[str | None, typer.Argument(help="A timm model name, e.g. vgg19 or resnet50.")] = None,
    freeze: Annotated[
        str | None,
        typer.Option(help="N (first N layers, Keras indexing for VGG), P% of the parameters, none or all."),
    ] = None,
    recipe: Annotated[str, typer.Option(help="A named recipe (see `tlbench recipes`).")] = (
        options.DEFAULT_RECIPE
    ),
    data: Annotated[
        str | None, typer.Option(help="A data folder, or synthetic[:CxN[@SIZE]]. Default: the data root.")
    ] = None,
    data_format: DataFormatOpt = None,
    split_seed: Annotated[
        int, typer.Option("--split-seed", help="Seed of the per-class split (csv/pickle).")
    ] = 0,
    skip_corrupt: Annotated[
        bool, typer.Option("--skip-corrupt", help="Skip (and count) corrupt images.")
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the recipe's learning rate.")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size")] = None,
    normalize: Annotated[
        str | None,
        typer.Option(help=f"{_one_of(Normalize)}: x/255, ImageNet's or the weights' own mean/std."),
    ] = None,
    aug: Annotated[str | None, typer.Option(help=f"{_one_of(Augment)}.")] = None,
    pool: Annotated[str | None, typer.Option(help=f"{_one_of(Pool)} (how features enter the head).")] = None,
    interpolation: Annotated[str | None, typer.Option(help=f"Resize: {_one_of(Interpolation)}.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, order, augmentation and dropout.")] = 0,
    max_time: Annotated[
        str | None,
        typer.Option("--max-time", help="Stop cleanly before this wall-clock budget (90s, 15m, 2h)."),
    ] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained/--no-pretrained", help="ImageNet weights via timm (HF cache).")
    ] = True,
    weights: Annotated[
        str | None, typer.Option(help="Local weights: .safetensors, .pth, .bin or local-dir:FOLDER.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[str, typer.Option(help=_AMP_HELP)] = "auto",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory layout.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    data_on_device: Annotated[
        str, typer.Option("--data-on-device", help=f"{_one_of(Placement)}: where the images live.")
    ] = "auto",
    feature_cache: Annotated[
        bool,
        typer.Option(
            "--feature-cache/--no-feature-cache",
            help="Linear probe (--freeze all) without augmentation: compute the features once.",
        ),
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Run directory (default results/runs/<time>-...).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the unfinished run in this directory.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Train BACKBONE with a recipe (default: the reference Keras VGG19 recipe) and write a run directory."""
    from tlbench.train.config import run_config
    from tlbench.train.trainer import train

    if resume is not None:
        given = [n for n in ctx.params if n not in ("resume", "quiet", "backbone") and _given(ctx, n)]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise UsageError(
                f"--resume continues with the run's saved config; {flags} would be ignored",
                "drop them, or start a new run with the options you want",
            )
        cfg = _saved_config(resume, backbone)
    elif backbone is None:
        raise UsageError("missing BACKBONE", "e.g. tlbench run vgg19 --freeze 11 (or --resume RUN_DIR)")
    else:
        cfg = run_config(backbone, recipe, freeze=freeze, seed=seed, out=out, **_run_options(ctx))
    run_dir = train(cfg, resume=resume, progress=not quiet)
    _print_summary(run_dir)


_NOT_RUN_OPTIONS = ("backbone", "freeze", "recipe", "seed", "out", "resume", "quiet")
"""Parameters of `tlbench run` that are not shared run options (a sweep sets or refuses them)."""
_FIELD_OF_PARAM = {"aug": "augment"}
"""`tlbench run` parameters named unlike their `run_config` keyword (every other is the same)."""


def _given(ctx: Any, name: str) -> bool:
    """The parameter was given on the command line (not a default)."""
    return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"


def _run_options(ctx: Any, *, given_only: bool = False) -> dict[str, Any]:
    """The run options of a parsed `tlbench run` as `run_config` keyword arguments."""
    return {
        _FIELD_OF_PARAM.get(name, name): value
        for name, value in ctx.params.items()
        if name not in _NOT_RUN_OPTIONS and (not given_only or _given(ctx, name))
    }


def _saved_config(run_dir: Path, backbone: str | None) -> Any:
    """The `RunConfig` of an unfinished run to resume (BACKBONE, if given, must be the run's)."""
    from tlbench.errors import OutputError
    from tlbench.rundir import RunDir

    saved = RunDir(run_dir).read_config()
    if saved.kind != "run":
        raise OutputError(
            f"{run_dir} is a {saved.kind}, not a training run", "--resume takes a folder made by tlbench run"
        )
    if backbone is not None and backbone != saved.backbone:
        raise UsageError(
            f"{run_dir} trains {saved.backbone}, not {backbone}", "leave BACKBONE out with --resume"
        )
    return saved.config


def _print_summary(run_dir: Path) -> None:
    from rich.table import Table

    from tlbench._console import console
    from tlbench.rundir import RunDir

    s = RunDir(run_dir).read_summary()
    table = Table(title=f"run {run_dir}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    memory = "-" if s.peak_memory_bytes is None else f"{s.peak_memory_bytes / 2**20:,.0f} MiB"
    rows = [
        ("status", f"{s.status} after {s.epochs} epoch(s)"),
        ("best val top-1", f"{100 * s.best_val_top1:.2f} % (epoch {s.best_epoch})"),
        ("final val top-1 / top-5", f"{100 * s.final_val_top1:.2f} % / {100 * s.final_val_top5:.2f} %"),
        ("final val loss", f"{s.final_val_loss:.4f}"),
        ("parameters", f"{s.params_trainable:,} trainable of {s.params_total:,}"),
        ("train / infer images/s", f"{_rate(s.train_images_per_sec)} / {_rate(s.infer_images_per_sec)}"),
        ("device", f"{s.device} (amp {s.amp}), peak memory {memory}"),
        ("weights", s.weights_source),
        ("wall time", f"{s.wall_seconds:.0f} s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)


def _rate(images_per_sec: float | None) -> str:
    return "-" if images_per_sec is None else f"{images_per_sec:,.0f}"


@app.command(
    "sweep",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def sweep(
    ctx: typer.Context,
    backbones: Annotated[
        list[str], typer.Option("--backbones", help="Comma-separated (or repeated) timm names.")
    ],
    freeze: Annotated[
        list[str] | None, typer.Option(help="Freeze specs, e.g. 11,50%,all (default: each recipe's own).")
    ] = None,
    recipes: Annotated[list[str] | None, typer.Option("--recipes", help="Recipe names.")] = None,
    seeds: Annotated[list[str] | None, typer.Option("--seeds", help="Seeds, e.g. 0,1,2.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Sweep folder (default results/sweeps/sweep-<hash of the grid and the run options>: "
            "the same command continues the same sweep)."
        ),
    ] = None,
    gpus: Annotated[str | None, typer.Option(help="Run cells in parallel, one per GPU: 0,1,...")] = None,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Add the zero-training baseline per backbone.")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the grid and the checks; run nothing.")
    ] = False,
) -> None:
    """Run a grid of backbones x freeze depths x recipes x seeds; any `tlbench run` option is passed on."""
    from tlbench.sweep import run_sweep, split_list
    from tlbench.train.recipes import get_recipe

    recipe_names = split_list(recipes) or [options.DEFAULT_RECIPE]
    freezes = split_list(freeze)
    if not freezes:
        freezes = sorted({get_recipe(r).freeze for r in recipe_names})
    try:
        seed_list = [int(s) for s in split_list(seeds)] or [0]
    except ValueError:
        raise UsageError(f"--seeds {seeds} must be integers", "e.g. --seeds 0,1,2") from None
    folder, states = run_sweep(
        split_list(backbones),
        freezes,
        recipe_names,
        seed_list,
        _forwarded_run_options(ctx),
        out=out,
        gpus=split_list([gpus] if gpus else None),
        baselines=baseline,
        dry_run=dry_run,
    )
    if dry_run:
        return
    counts: dict[str, int] = {}
    for st in states.values():
        counts[st.status] = counts.get(st.status, 0) + 1
    from tlbench._console import console

    console().print(
        f"sweep {folder}: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f"; compare with: tlbench report {folder}"
    )
    if counts.get("failed") or counts.get("invalid"):
        raise typer.Exit(1)


_SET_BY_THE_SWEEP = ("freeze", "recipe", "seed", "out", "resume")


def _forwarded_run_options(ctx: Any) -> dict[str, Any]:
    """The `tlbench run` options after the sweep's own, parsed by `run`'s parser, as run options.

    Only the options given are kept, so every other value stays each recipe's own.
    """
    root = ctx.find_root()
    run_cmd = root.command.get_command(root, "run")
    try:
        run_ctx = run_cmd.make_context("run", ["BACKBONE", *ctx.args], parent=root)
    except typer.Exit:  # --help
        raise
    except Exception as exc:  # click's UsageError, whichever click Typer carries
        fmt = getattr(exc, "format_message", None)
        message = fmt() if callable(fmt) else str(exc)
        raise UsageError(f"bad run option for the sweep: {message}") from None
    for name in _SET_BY_THE_SWEEP:
        if _given(run_ctx, name):
            raise UsageError(f"--{name} is set by the sweep", "use --freeze/--recipes/--seeds/--out of sweep")
    return _run_options(run_ctx, given_only=True)


@app.command("bench")
def bench(
    backbones: Annotated[str, typer.Argument(help="One or more timm names, comma-separated.")],
    freeze: Annotated[
        str, typer.Option(help="Freeze spec of the recipe's model (N, P%, none, all).")
    ] = "none",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch to try first (halved on OOM).")] = 64,
    image_size: Annotated[int, typer.Option("--image-size")] = 224,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[str, typer.Option(help=_AMP_HELP)] = "auto",
    channels_last: Annotated[bool, typer.Option("--channels-last")] = False,
    compile: Annotated[bool, typer.Option("--compile")] = False,
    mode: Annotated[str, typer.Option(help=f"{_one_of(BenchMode)}.")] = "both",
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
        channels_last=channels_last,
        compile=compile,
        mode=mode,  # type: ignore[arg-type]
        warmup=warmup,
        steps=steps,
        repeats=repeats,
        data=data,
        recipe=recipe,
        baseline_loop=baseline_loop,
        out=str(out) if out else None,
    )
    code = run_bench_command(backbones, settings, as_json=json_out, quiet=quiet)
    if code:
        raise typer.Exit(code)


@app.command("report")
def report(
    dirs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run, sweep or bench folders or files (default: results/runs, sweeps, bench)."),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="table, markdown, csv, json or html.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write the table to this file instead of stdout.")] = None,
    group_by: Annotated[
        list[str] | None,
        typer.Option("--group-by", help="Group on these fields (comma-separated or repeated)."),
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Write the comparison plots to this folder.")] = None,
) -> None:
    """One row per configuration, seeds aggregated as mean +- std (n), beside the zero-training baseline."""
    from tlbench.report.command import report as report_command

    report_command(dirs, format, out, group_by, plots)


@app.command("baseline")
def baseline(
    backbone: Annotated[str, typer.Argument(help="A timm model with ImageNet-1k weights.")],
    data: Annotated[
        str | None, typer.Option(help="A data folder, or synthetic[...]. Default: the data root.")
    ] = None,
    data_format: DataFormatOpt = None,
    split_seed: Annotated[int, typer.Option("--split-seed")] = 0,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt")] = False,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Default: the weights' own.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    weights: Annotated[
        str | None, typer.Option(help="A full local checkpoint (with its ImageNet head).")
    ] = None,
    device: Annotated[str, typer.Option()] = "auto",
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default results/runs/<time>-BACKBONE-baseline).")
    ] = None,
) -> None:
    """Zero training: the pretrained ImageNet-1k classifier restricted to the data set's classes."""
    from tlbench.train.baseline import run_baseline

    run_baseline(
        backbone,
        data,
        data_format=data_format,
        split_seed=split_seed,
        skip_corrupt=skip_corrupt,
        image_size=image_size,
        batch_size=batch_size,
        weights=weights,
        device=device,
        out=out,
    )


@app.command("recipes")
def recipes(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the named recipes with every value."""
    from dataclasses import asdict

    from rich.table import Table

    from tlbench._console import console
    from tlbench.train.recipes import RECIPES

    if json_out:
        _print_json({name: asdict(r) for name, r in RECIPES.items()})
        return
    for r in RECIPES.values():
        table = Table(title=f"{r.name}: {r.summary}", show_header=False, title_justify="left")
        for key, value in asdict(r).items():
            if key not in ("name", "summary"):
                table.add_row(key, str(value))
        console().print(table)


@app.command("backbones")
def backbones(
    pattern: Annotated[str | None, typer.Argument(help="A glob, e.g. 'resnet*' or '*vit*'.")] = None,
    pretrained_only: Annotated[bool, typer.Option("--pretrained-only")] = False,
) -> None:
    """List timm backbones (* marks those with pretrained weights)."""
    from tlbench.models import list_backbones

    rows = list_backbones(pattern)
    for name, has_weights in rows:
        if has_weights or not pretrained_only:
            sys.stdout.write(f"{'*' if has_weights else ' '} {name}\n")
    if not rows:
        raise UsageError(f"no timm backbone matches {pattern!r}", "try a wider pattern such as '*resnet*'")


@app.command("layers")
def layers(
    backbone: Annotated[str, typer.Argument(help="A timm model name.")],
    freeze: Annotated[str | None, typer.Option(help="Show what this freeze spec freezes.")] = None,
    image_size: Annotated[int, typer.Option("--image-size")] = 224,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The backbone's layer list as --freeze counts it: index, name, type, parameters, frozen."""
    from dataclasses import asdict

    from rich.table import Table

    from tlbench._console import console
    from tlbench.models import backbone_layers, parse_freeze

    entries = backbone_layers(backbone, image_size)
    n_frozen = parse_freeze(freeze, entries) if freeze else 0
    rows = [asdict(e) | {"frozen": e.index < n_frozen} for e in entries]
    total = sum(r["params"] for r in rows)
    frozen = sum(r["params"] for r in rows if r["frozen"])
    if json_out:
        _print_json(
            {
                "backbone": backbone,
                "freeze": freeze,
                "layers": rows,
                "params_total": total,
                "params_frozen": frozen,
            }
        )
        return
    table = Table(title=f"{backbone} (freeze {freeze or 'none'})", title_justify="left")
    for col in ("index", "name", "type", "params", "frozen"):
        table.add_column(col, justify="right" if col in ("index", "params") else "left")
    for r in rows:
        table.add_row(str(r["index"]), r["name"], r["type"], f"{r['params']:,}", "yes" if r["frozen"] else "")
    table.add_section()
    table.add_row("", "total", "", f"{total:,}", f"{frozen:,} frozen")
    console().print(table)


@app.command("demo")
def demo(
    epochs: Annotated[int, typer.Option(help="Epochs of the demo run.")] = 3,
    image_size: Annotated[int, typer.Option("--image-size")] = 32,
    out: Annotated[Path | None, typer.Option(help="Run directory (default results/runs/...).")] = None,
) -> None:
    """The main job on built-in synthetic data: the reference recipe on vgg19, small and short."""
    from tlbench.demo import run_demo

    run_dir = run_demo(epochs, image_size, out)
    _print_summary(run_dir)


def _click_exceptions() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage errors, aborts) for the click that Typer uses: its own vendored copy or click itself."""
    usage: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = [KeyboardInterrupt, typer.Abort]
    typer_base = getattr(getattr(typer, "exceptions", None), "TyperException", None)
    if typer_base is not None:
        usage.append(typer_base)
    try:
        import click

        usage.append(click.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(usage), tuple(aborts)


_FLAG_OF_FIELD = {"augment": "--aug"}
"""Config fields whose flag is not `--` + the field with `-` for `_` (see `_flag_of`)."""


def _flag_of(field: str) -> str | None:
    """The command-line flag of a config field (`image_size` -> `--image-size`), or None without one.

    A nested field (`recipe.lr`) is looked up by its last part; a recipe value that no command
    overrides (`momentum`) has no flag.
    """
    name = field.rsplit(".", 1)[-1]
    flag = _FLAG_OF_FIELD.get(name, "--" + name.replace("_", "-"))
    return flag if flag in _flags(typer.main.get_command(app)) else None


def _flags(command: Any) -> set[str]:
    """Every option string of `command` and its subcommands."""
    found = {opt for param in command.params for opt in param.opts}
    for sub in getattr(command, "commands", {}).values():
        found |= _flags(sub)
    return found


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and an exit code."""
    usage_errors, aborts = _click_exceptions()

    def invoke() -> object:
        try:
            return app(args=argv, prog_name="tlbench", standalone_mode=False)
        except ConfigError as exc:
            flag = _flag_of(exc.field)
            raise (exc.as_flag(flag) if flag else exc) from None
        except usage_errors as exc:
            exc.show()  # type: ignore[attr-defined]
            return getattr(exc, "exit_code", 2)

    sys.exit(run_entry_point(invoke, aborts))


if __name__ == "__main__":
    main()
