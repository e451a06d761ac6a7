"""The `tlbench` command line.

Importing this module stays cheap (no torch, no numpy) so that `tlbench --help` is instant; every
command imports what it needs when it runs. User mistakes raise `tlbench.errors.TlbenchError`,
which `main` prints as one line with its documented exit code.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from tlbench.errors import EXIT_INTERRUPTED, TlbenchError

app = typer.Typer(
    name="tlbench",
    help="Transfer-learning benchmarks on mini-ImageNet: the Keras VGG19 recipe on any timm backbone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Create, check and fetch mini-ImageNet data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DataFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--data-format",
        help="Force a layout instead of detecting it: imagefolder, ravi-csv, pickle or parquet.",
    ),
]


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be empty).")],
    format: Annotated[str, typer.Option("--format", help="imagefolder, ravi-csv, pickle or parquet.")] = (
        "imagefolder"
    ),
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


@app.command("demo")
def demo(
    data: Annotated[str, typer.Option(help="Data set: a folder or synthetic[:CxN[@SIZE]].")] = "synthetic",
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the packed images.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
) -> None:
    """The data pipeline end to end on synthetic data: build, check, pack, load, augment."""
    from tlbench.demo import run_demo

    run_demo(data, image_size, batch_size)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"tlbench: warning: {message}\n"


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and an exit code."""
    usage_errors, aborts = _click_exceptions()
    warnings.formatwarning = _format_warning
    try:
        rv = app(args=argv, prog_name="tlbench", standalone_mode=False)
    except TlbenchError as exc:
        sys.stderr.write(f"tlbench: error: {exc.one_line()}\n")
        sys.exit(exc.exit_code)
    except aborts:
        sys.stderr.write("tlbench: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except usage_errors as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
