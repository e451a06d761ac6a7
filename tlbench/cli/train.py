"""`tlbench run`, `sweep`, `baseline` and `demo`: the commands that write run directories.

Also what they share: the summary printed after a run, and the parsing of `tlbench run` options
that a sweep forwards to every cell.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from tlbench import options
from tlbench.cli import _schema
from tlbench.cli._common import DataFormatOpt
from tlbench.config.cluster import ClusterOptions
from tlbench.config.eval import PANEL_SWEEP, SWEEP_FIELDS, EvalOptions
from tlbench.config.recipes import get_recipe
from tlbench.config.tuning import RACE_FIELDS, TUNE_FIELDS, RaceOptions, TuneOptions
from tlbench.demo import DEMO_EPOCHS, DEMO_IMAGE_SIZE
from tlbench.errors import UsageError

_RUN_OPTIONS = _schema.parameters(*_schema.SCHEMA_CLASSES)
"""Every `tlbench run` option, from the fields of `Recipe` and `RunConfig`."""
_SWEEP_DEFAULTS = {"select": options.SWEEP_SELECT}
"""Run options whose default differs in a sweep: a comparison chooses each cell's best epoch on a
selection split, not on the validation images it reports (`tlbench run` keeps `--select none`)."""
_SWEEP_RUN_OPTIONS = _schema.parameters(
    *_schema.SCHEMA_CLASSES, exclude=("freeze", "seed", "out"), defaults=_SWEEP_DEFAULTS
)
"""The run options a sweep passes on to every cell (it sets freeze, seed and out itself)."""
_SWEEP_EVAL_OPTIONS = _schema.parameters(
    EvalOptions,
    exclude=[f.name for f in _schema.cli_fields(EvalOptions) if f.name not in SWEEP_FIELDS],
    defaults={"protocols": "none"},
    panel=PANEL_SWEEP,
)
"""`--protocols` and the episodes' options: the evaluation of every backbone after the cells."""


def _check_trackers(values: dict[str, Any]) -> None:
    """`--log` names trackers whose extras are installed (before any run or cell starts)."""
    if values.get("log"):
        from tlbench.train.trackers import check_log, require

        require(check_log(values["log"]))


@_schema.with_options(_RUN_OPTIONS)
def run(
    ctx: typer.Context,
    backbone: Annotated[str | None, typer.Argument(help="A timm model name, e.g. vgg19 or resnet50.")] = None,
    recipe: Annotated[
        str,
        typer.Option(
            help="A named recipe (see `tlbench recipes`) or a recipe file NAME.yaml.",
            rich_help_panel=options.PANEL_RECIPE,
        ),
    ] = options.DEFAULT_RECIPE,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the unfinished run in this directory.", rich_help_panel=options.PANEL_OUTPUT
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress display.", rich_help_panel=options.PANEL_OUTPUT)
    ] = False,
    **run_options: Any,
) -> None:
    """Train BACKBONE with a recipe (default: the reference Keras VGG19 recipe) and write a run directory.

    Every recipe value is an option of the same name (--lr, --weight-decay, --epochs, ...).
    """
    from tlbench.config import run_config
    from tlbench.train.trainer import train

    given = _schema.given(run_options)
    if resume is not None:
        flags = [_schema.flag_of(n) or n for n in given] + (["--recipe"] if _given(ctx, "recipe") else [])
        if flags:
            raise UsageError(
                f"--resume continues with the run's saved config; {', '.join(flags)} would be ignored",
                "drop them, or start a new run with the options you want",
            )
        from tlbench.train.api import resume_config

        cfg = resume_config(resume, backbone)
    elif backbone is None:
        raise UsageError("missing BACKBONE", "e.g. tlbench run vgg19 --freeze 11 (or --resume RUN_DIR)")
    else:
        _check_trackers(given)
        cfg = run_config(backbone, recipe, **given)
    run_dir = train(cfg, resume=resume, progress=not quiet)
    from tlbench.train.distributed import from_environment

    if from_environment()[0] == 0:  # under torchrun, rank 0 speaks for the run
        _print_summary(run_dir)


def _given(ctx: Any, name: str) -> bool:
    """The parameter was given on the command line (not a default)."""
    return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"


def _print_summary(run_dir: Path) -> None:
    from rich.table import Table

    from tlbench._console import console, plain, say
    from tlbench.rundir import RunDir
    from tlbench.speed import describe

    run = RunDir(run_dir)
    s = run.read_summary()
    chosen = run.read_config().resolved.speed
    layout = f", {describe(chosen)}" if chosen else ""
    amp_why = (chosen or {}).get("why", {}).get("amp")
    precision = "fp32" if s.amp == "off" else s.amp
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    chosen_on = (
        f", chosen on the selection split of {s.select_images:,} images: top-1 {_pct(s.best_select_top1)}"
        if s.best_chosen_on == "select"
        else ", chosen on validation"
    )
    memory = "-" if s.peak_memory_bytes is None else f"{s.peak_memory_bytes / 2**20:,.0f} MiB"
    rows = [
        ("status", f"{s.status} after {s.epochs} epoch(s)"),
        ("best val top-1", f"{_pct(s.best_val_top1)} (epoch {s.best_epoch or 'none: untrained'}{chosen_on})"),
        ("final val top-1 / top-5", f"{_pct(s.final_val_top1)} / {_pct(s.final_val_top5)}"),
        ("final val loss", "-" if s.final_val_loss is None else f"{s.final_val_loss:.4f}"),
        ("parameters", f"{s.params_trainable:,} trainable of {s.params_total:,}"),
        ("train / infer images/s", f"{_rate(s.train_images_per_sec)} / {_rate(s.infer_images_per_sec)}"),
        ("device", f"{s.device} (amp {s.amp}{layout}), peak memory {memory}"),
        *([("precision", f"{precision} ({amp_why})")] if amp_why else []),
        *([("processes", f"{s.world_size} (torchrun), numbers of all of them")] if s.world_size > 1 else []),
        ("weights", s.weights_source),
        ("wall time", f"{s.wall_seconds:.0f} s"),
    ]
    for key, value in rows:
        table.add_row(key, plain(value))
    say(f"run {run_dir}", style="bold", soft_wrap=True)  # on a line of its own: a path to copy, never wrapped
    console().print(table)


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f} %"


def _rate(images_per_sec: float | None) -> str:
    return "-" if images_per_sec is None else f"{images_per_sec:,.0f}"


_SET_BY_THE_SWEEP = ("seed", "recipe", "resume")
"""`tlbench run` options a sweep sets itself (as --seeds, --recipes; its folder resumes): hidden
options that say so, instead of click's "no such option"."""
_RESERVED = [
    inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option(f"--{n}", hidden=True)])
    for n in _SET_BY_THE_SWEEP
]  # fmt: skip


@_schema.with_options(
    _SWEEP_RUN_OPTIONS
    + _schema.parameters(TuneOptions, RaceOptions, ClusterOptions)
    + _SWEEP_EVAL_OPTIONS
    + _RESERVED
)
def sweep(
    backbones: Annotated[
        list[str], typer.Option("--backbones", help="Comma-separated (or repeated) timm names.")
    ],
    freeze: Annotated[
        list[str] | None, typer.Option(help="Freeze specs, e.g. 11,50%,all (default: each recipe's own).")
    ] = None,
    recipes: Annotated[
        list[str] | None, typer.Option("--recipes", help="Recipe names or recipe files (.yaml).")
    ] = None,
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
    executor: Annotated[
        str,
        typer.Option(
            help="local: one process per cell (and --gpus slot); slurm: a Slurm job array.",
            metavar="local|slurm",
        ),
    ] = "local",
    status: Annotated[
        bool,
        typer.Option("--status", help="Show each cell's state (cluster job, run directory); run nothing."),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="slurm: stay until every cell has ended (default: return once submitted)."
        ),
    ] = False,
    **options_given: Any,
) -> None:
    """Run a grid of backbones x freeze depths x recipes x seeds; the `tlbench run` options given are
    passed on to every cell (the rest stay each recipe's own), and --select (default 10%: each
    cell's best epoch is chosen on a selection split held out of training)."""
    from tlbench.sweep import run_sweep, split_list

    given = _SWEEP_DEFAULTS | _schema.given(options_given)  # forwarded like any option given
    for name in _SET_BY_THE_SWEEP:
        if given.pop(name, None) is not None:
            raise UsageError(f"--{name} is set by the sweep", "use --freeze/--recipes/--seeds/--out of sweep")
    cluster = _cluster_options({k: given.pop(k) for k in _CLUSTER_FIELDS if k in given}, executor, gpus)
    tuning = _switched(TuneOptions, "tune", {k: given.pop(k) for k in TUNE_FIELDS if k in given})
    race = _switched(RaceOptions, "race", {k: given.pop(k) for k in RACE_FIELDS if k in given})
    asked = {k: given.pop(k) for k in SWEEP_FIELDS if k in given}
    if str(asked.get("protocols", "")).strip().lower() == "none":  # the default, said: no evaluation
        del asked["protocols"]
    evaluation = _switched(EvalOptions, "protocols", asked)
    _check_trackers(given)
    recipe_names = split_list(recipes) or [options.DEFAULT_RECIPE]
    folder, states = run_sweep(
        split_list(backbones),
        split_list(freeze) or sorted({get_recipe(r).freeze for r in recipe_names}),
        recipe_names,
        _seeds(seeds),
        given,
        out=out,
        gpus=split_list([gpus] if gpus else None),
        baselines=baseline,
        dry_run=dry_run,
        executor=executor,
        cluster=cluster,
        status=status,
        wait=wait,
        tuning=tuning,
        race=race,
        evaluation=evaluation,
    )
    if not (dry_run or status):
        _sweep_summary(folder, states, evaluation is not None)


_CLUSTER_FIELDS = tuple(f.name for f in _schema.cli_fields(ClusterOptions))
"""`tlbench sweep` options that are `ClusterOptions` fields (the Slurm panel)."""


def _switched(cls: Any, switch: str, given: dict[str, Any]) -> Any:
    """`cls(**given)` when its switch flag (`--tune NAMES`, `--race`) was given, else None.

    Raises:
        UsageError: One of its other flags without the switch.
    """
    if given.get(switch):
        return cls(**given)
    others = [k for k in given if k != switch]
    if others:
        flag, on = _schema.flag_of(others[0]), _schema.flag_of(switch)
        raise UsageError(f"{flag} is for {on}", f"add {on}, or drop {flag}")
    return None


def _seeds(seeds: list[str] | None) -> list[int]:
    from tlbench.sweep import split_list

    try:
        return [int(s) for s in split_list(seeds)] or [0]
    except ValueError:
        raise UsageError(f"--seeds {seeds} must be integers", "e.g. --seeds 0,1,2") from None


def _sweep_summary(folder: Path, states: dict[str, Any], protocols: bool = False) -> None:
    """One line: how many cells ended how (and the evaluation, with --protocols), and what to run
    next; exit 1 if a cell or the evaluation failed (its runs are kept)."""
    from tlbench._console import say
    from tlbench.sweep.evaluate import EVAL_FOLDER, evaluated

    counts: dict[str, int] = {}
    for st in states.values():
        counts[st.status] = counts.get(st.status, 0) + 1
    active = counts.get("queued") or counts.get("running")
    follow = "; follow with the same command and --status" if active else ""
    cells = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    eval_failed = protocols and not evaluated(folder)
    if protocols:
        cells += "; the evaluation failed" if eval_failed else f"; evaluation in {folder / EVAL_FOLDER}"
    say(f"sweep {folder}: {cells}; compare with: tlbench report {folder}{follow}", soft_wrap=True)
    if counts.get("failed") or counts.get("invalid") or eval_failed:
        raise typer.Exit(1)


def _cluster_options(given: dict[str, Any], executor: str, gpus: str | None) -> ClusterOptions | None:
    """The `ClusterOptions` of `--executor slurm` from the sweep's Slurm flags; None for a local sweep.

    Raises:
        UsageError: A Slurm flag without `--executor slurm`, `--gpus` with it, or no `--slurm-time`.
    """
    if executor not in ("local", "slurm"):
        raise UsageError(f"--executor {executor!r} is not one of local, slurm")
    if executor != "slurm":
        if given:
            flag = _schema.flag_of(next(iter(given)))
            raise UsageError(f"{flag} is for --executor slurm", "add --executor slurm, or drop it")
        return None
    if gpus:
        raise UsageError("--gpus picks local GPUs", "with --executor slurm, ask for --gpus-per-cell N")
    if "slurm_time" not in given:
        raise UsageError(
            "--executor slurm needs --slurm-time, each job's time limit",
            "e.g. --slurm-time 4h (a longer cell is requeued and resumes)",
        )
    return ClusterOptions(**given)


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


def demo(
    epochs: Annotated[int, typer.Option(help="Epochs of each run.")] = DEMO_EPOCHS,
    image_size: Annotated[int, typer.Option("--image-size")] = DEMO_IMAGE_SIZE,
    data: Annotated[
        str | None,
        typer.Option(help="A data folder or a synthetic spec (default synthetic:10x60@SIZE)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="A new folder for both runs and report.html (default results/demo/TIME)."),
    ] = None,
) -> None:
    """A small comparison on built-in synthetic data: the reference recipe against timm-ft on test_resnet,
    then the compact table, why they differ, and the report page (about a minute on 2 CPU cores)."""
    from tlbench.demo import run_demo

    run_demo(epochs, image_size, out, data=data)
