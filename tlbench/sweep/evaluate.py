"""`tlbench sweep --protocols`: the frozen-feature evaluation (`tlbench eval`) of every backbone of
the grid, run by a local sweep after its cells, into `<sweep>/eval/`.

    opts = eval_options(EvalOptions(protocols="linear,knn"), run_options, [0], folder, "local", backbones)
    evaluate_sweep(backbones, opts)  # after the cells, while the sweep holds its folder

It is `tlbench.eval.command.evaluate` with the sweep's settings: a shared setting the sweep was
given (`SHARED`: the data, image size, weights, device, ...) is the evaluation's too, one not given
is `tlbench eval`'s default; the selection split is the cells' (the probe and k-NN choose on the
images the cells chose their best epoch on; under `--select none`, eval's own 20 %), and the seed
the grid's first (the episodes, a random initialisation). The protocols and the episodes are the
sweep's `--protocols`, `--ways`, `--shots`, `--queries`, `--episodes` (`SWEEP_FIELDS`).

`<sweep>/eval/` is done when its eval.json exists (written last): the same sweep again leaves it
alone; an interrupted evaluation left none, and the next run evaluates again (features extracted
before come from the feature cache). A failed evaluation is one line; the cells' runs are kept.
A cluster sweep returns before its cells run, so `--protocols` is refused there, naming the
`tlbench eval` command to run once the jobs end.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from tlbench._console import say
from tlbench.config.eval import EvalOptions
from tlbench.config.run import parse_select
from tlbench.errors import Interrupted, TlbenchError, UsageError
from tlbench.report.protocols import EVAL_FILE

EVAL_FOLDER = "eval"
"""The evaluation folder inside the sweep folder, where `tlbench report SWEEP` finds it."""
SHARED = (
    "data", "data_format", "split_seed", "skip_corrupt", "image_size", "interpolation", "normalize",
    "pool", "pretrained", "weights", "device", "amp",
)  # fmt: skip
"""Run options of the sweep that mean the same in `EvalOptions` (not `batch_size`: a training batch)."""


def eval_options(
    asked: EvalOptions | None,
    run_options: dict[str, Any],
    seeds: list[int],
    folder: Path,
    executor: str,
    backbones: list[str],
) -> EvalOptions | None:
    """The evaluation of a sweep: `asked` (its protocols and episodes) with the sweep's settings.

    Raises:
        ConfigError: A shared setting the evaluation cannot take (e.g. an image size out of bounds).
        UsageError: A cluster executor: its cells end after the sweep has returned.
    """
    if asked is None:
        return None
    shared = {k: run_options[k] for k in SHARED if k in run_options}
    select = str(run_options.get("select", "none"))
    if parse_select(select) is not None:
        shared["select"] = select
    opts = replace(asked, **shared, seed=seeds[0] if seeds else 0, out=str(folder / EVAL_FOLDER))
    if executor != "local":
        raise UsageError(
            f"--protocols evaluates where the sweep runs, after its cells; --executor {executor} runs them "
            "as jobs",
            f"drop --protocols; once the jobs end, run {eval_command(backbones, opts)}",
        )
    return opts


def eval_command(backbones: list[str], opts: EvalOptions) -> str:
    """The `tlbench eval` command line of this evaluation (its options that are not eval's defaults)."""
    words = ["tlbench", "eval", ",".join(backbones)]
    default = EvalOptions()
    for f in fields(EvalOptions):
        value = getattr(opts, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return shlex.join(words)


def evaluated(folder: Path) -> bool:
    """The sweep in `folder` holds a complete evaluation (its eval.json, written last)."""
    return (folder / EVAL_FOLDER / EVAL_FILE).is_file()


def evaluate_sweep(backbones: list[str], opts: EvalOptions, *, progress: bool = True) -> bool:
    """Evaluate the grid's backbones into `opts.out`, unless it holds an evaluation already.

    Returns:
        Whether the folder holds an evaluation now. A failure (data that cannot give the episodes
        asked for, weights that cannot be had, ...) is printed as one line; the runs are untouched.
    """
    out = Path(str(opts.out))
    if (out / EVAL_FILE).is_file():
        say(f"sweep: {out} holds the evaluation already{_unlike(out, backbones, opts)}", soft_wrap=True)
        return True
    from tlbench.eval.command import evaluate

    what = f"{len(backbones)} backbone(s), {','.join(opts.protocols)}"
    say(f"sweep: evaluating the frozen features ({what}) into {out}", soft_wrap=True)
    try:
        evaluate(backbones, opts, progress=progress)
    except Interrupted:
        raise
    except TlbenchError as exc:
        say(
            ("sweep: the evaluation failed", "red"),
            f": {exc.one_line()} (the runs are kept; the same command again retries it)",
            soft_wrap=True,
        )
        return False
    return True


def _unlike(out: Path, backbones: list[str], opts: EvalOptions) -> str:
    """Nothing where `out` holds this very evaluation, else what differs and how to redo it."""
    redo = f"; kept: delete {out} to evaluate again"
    asked = json.loads(json.dumps(opts.to_dict()))  # as eval.json holds it: tuples as lists
    try:
        doc = json.loads((out / EVAL_FILE).read_text(encoding="utf-8"))
        differ = [k for k in asked if k != "out" and doc["options"].get(k) != asked[k]]
        differ[:0] = ["backbones"] if set(doc["results"]) != set(backbones) else []
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return f" (unreadable){redo}"
    return f" (other {', '.join(differ)}){redo}" if differ else ""
