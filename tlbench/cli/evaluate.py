"""`tlbench eval`: frozen features of several backbones, scored by a linear probe, k-NN and few-shot
episodes from one extraction each. Its options are the fields of `tlbench.config.eval.EvalOptions`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tlbench import options
from tlbench.cli import _schema
from tlbench.config.eval import EvalOptions

_EVAL_OPTIONS = _schema.parameters(EvalOptions)
"""Every `tlbench eval` option, from the fields of `EvalOptions`."""


@_schema.with_options(_EVAL_OPTIONS)
def evaluate(
    backbones: Annotated[
        str, typer.Argument(help="Comma-separated timm names, e.g. resnet50,vit_small_patch16_224.")
    ],
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress display.", rich_help_panel=options.PANEL_OUTPUT)
    ] = False,
    **eval_options: Any,
) -> None:
    """Linear probe, k-NN and few-shot episodes (5-way 1- and 5-shot) of each backbone's frozen
    features, extracted once (and kept in the user cache); writes an evaluation folder that
    `tlbench report` reads."""
    from tlbench._util import split_list
    from tlbench.eval.command import evaluate as run_eval

    run_eval(split_list([backbones]), EvalOptions(**_schema.given(eval_options)), progress=not quiet)
