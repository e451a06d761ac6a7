"""`tlbench recipes`, `backbones` and `layers`: what there is to choose from, and what it does."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tlbench.cli._common import print_json
from tlbench.errors import UsageError


def recipes(
    show: Annotated[
        str | None,
        typer.Option(help="Print this recipe (a name or a .yaml file) as a YAML recipe file to edit."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the named recipes with every value, or print one as a recipe file (--show)."""
    from dataclasses import asdict

    from rich.table import Table

    from tlbench._console import console, plain
    from tlbench.config import RECIPES, get_recipe

    if show is not None:
        from tlbench.config import recipe_yaml

        recipe = get_recipe(show)
        if json_out:
            print_json(asdict(recipe))
        else:
            sys.stdout.write(recipe_yaml(recipe))
        return
    if json_out:
        print_json({name: asdict(r) for name, r in RECIPES.items()})
        return
    for r in RECIPES.values():
        table = Table(title=plain(f"{r.name}: {r.summary}"), show_header=False, title_justify="left")
        for key, value in asdict(r).items():
            if key not in ("name", "summary"):
                table.add_row(key, plain(value))
        console().print(table)


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


def layers(
    backbone: Annotated[str, typer.Argument(help="A timm model name.")],
    freeze: Annotated[str | None, typer.Option(help="Show what this freeze spec freezes.")] = None,
    image_size: Annotated[int, typer.Option("--image-size")] = 224,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The backbone's layer list as --freeze counts it: index, name, type, parameters, frozen."""
    from dataclasses import asdict

    from rich.table import Table

    from tlbench._console import console, plain
    from tlbench.models import backbone_layers, parse_freeze

    entries = backbone_layers(backbone, image_size)
    n_frozen = parse_freeze(freeze, entries) if freeze else 0
    rows = [asdict(e) | {"frozen": e.index < n_frozen} for e in entries]
    total = sum(r["params"] for r in rows)
    frozen = sum(r["params"] for r in rows if r["frozen"])
    if json_out:
        print_json(
            {
                "backbone": backbone,
                "freeze": freeze,
                "layers": rows,
                "params_total": total,
                "params_frozen": frozen,
            }
        )
        return
    table = Table(title=plain(f"{backbone} (freeze {freeze or 'none'})"), title_justify="left")
    for col in ("index", "name", "type", "params", "frozen"):
        table.add_column(col, justify="right" if col in ("index", "params") else "left")
    for r in rows:
        cells = (str(r["index"]), r["name"], r["type"], f"{r['params']:,}", "yes" if r["frozen"] else "")
        table.add_row(*map(plain, cells))
    table.add_section()
    table.add_row("", "total", "", f"{total:,}", f"{frozen:,} frozen")
    console().print(table)
