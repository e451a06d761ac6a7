"""Option types and helpers that several command modules share (cheap to import: no torch)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from tlbench import options
from tlbench.config import DataFormat
from tlbench.options import AmpMode


def one_of(literal: Any) -> str:
    """`"auto, bf16, fp16 or off"`: the choices of a `tlbench.options` type, for help texts."""
    *rest, last = options.choices(literal)
    return f"{', '.join(rest)} or {last}" if rest else last


DATA_FORMATS = one_of(DataFormat)
AMP_HELP = f"{one_of(AmpMode)}; auto is bf16 on CUDA and on CPUs with AMX or AVX512-BF16, else off."

ChannelsLastOpt = Annotated[
    str,
    typer.Option(
        "--channels-last",
        help="NHWC memory layout: auto (NHWC for convolutional networks on CUDA, NCHW on the CPU), "
        "on or off.",
    ),
]
CompileOpt = Annotated[
    str,
    typer.Option(help="torch.compile the model: auto (on a GPU, for long runs; off on the CPU), on or off."),
]

DataFormatOpt = Annotated[
    str | None,
    typer.Option("--data-format", help=f"Force a layout instead of detecting it: {DATA_FORMATS}."),
]


def print_json(obj: object) -> None:
    """`obj` as indented JSON on stdout (values JSON lacks, such as paths, as strings)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
