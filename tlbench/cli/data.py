"""`tlbench data synth|check|download`: create, check and fetch mini-ImageNet data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlbench.cli._common import DATA_FORMATS, DataFormatOpt, print_json


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be empty).")],
    format: Annotated[str, typer.Option("--format", help=f"{DATA_FORMATS}.")] = "imagefolder",
    classes: Annotated[int, typer.Option(help="Number of classes (the first N standard wnids).")] = 100,
    per_class: Annotated[
        int, typer.Option("--per-class", help="Images per class, all splits together.")
    ] = 600,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 84,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same images.")] = 0,
) -> None:
    """Write a synthetic mini-ImageNet in a real on-disk layout, with the real wnids as class names."""
    from tlbench._console import say
    from tlbench.data.synth import write_synthetic

    path = write_synthetic(out, format, classes, per_class, size, seed, progress=True)
    say(f"wrote {classes} classes x {per_class} images ({format}, {size}px, seed {seed}) to {path}")


def check(
    path: Annotated[Path, typer.Argument(help="The data folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    data_format: DataFormatOpt = None,
) -> None:
    """Report the layout, classes, splits, image sizes and corrupt files. Exit 4 when unusable."""
    from tlbench._console import say
    from tlbench.data.check import check_data

    report = check_data(path, data_format, progress=not json_out)
    if json_out:
        print_json(report)
    else:
        _print_check(report)
    if not report["usable"]:
        if not json_out:
            say(("not usable:", "red"), f" {'; '.join(report['problems'])}")
        raise typer.Exit(4)


def _print_check(report: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    from tlbench._console import console, plain, say

    table = Table(title=plain(report["path"]), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    standard = (
        ("yes", "")
        if report["standard_mini_imagenet"]
        else ("no: not the standard mini-ImageNet 100", "yellow")
    )
    rows: list[tuple[str, str | Text]] = [
        ("format", report["format"]),
        ("classes", Text.assemble(f"{report['num_classes']} (standard 100: ", standard, ")")),
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
        table.add_row(key, value if isinstance(value, Text) else plain(value))
    console().print(table)
    for note in report["notes"]:
        say(f"note: {note}")
    for bad in report["corrupt"]:
        say(("corrupt:", "red"), f" {bad['ref']}  ({bad['error']})")


def download(
    dest: Annotated[
        Path | None, typer.Option(help="Target folder (default: $TLBENCH_DATA/mini-imagenet).")
    ] = None,
) -> None:
    """Fetch timm/mini-imagenet (parquet, 100 classes, 500/100/50 per class) from the Hugging Face Hub."""
    from tlbench._console import say
    from tlbench.data.download import download as download_data

    target = download_data(dest)
    say(f"downloaded to {target}; check it with: tlbench data check {target}")
