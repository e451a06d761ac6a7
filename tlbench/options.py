"""The one schema of option values: literal choices and bounds, checked when a config is built.

`Recipe`, `RunConfig` and `BenchOptions` are frozen dataclasses whose fields are typed with the
`Literal` choices below and carry their bounds in field metadata (`bounded(lo, hi)`).
`check(obj)` validates every field of such a dataclass against its type and bounds, and raises
`ConfigError` naming the field (`lr`, `image_size`); the CLI names the flag instead. The CLI's
help and the sweep's checks read the same choices from here, so a choice is written once.

Importing this module is cheap (no torch).
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from tlbench.errors import ConfigError

AmpMode = Literal["auto", "bf16", "fp16", "off"]
Placement = Literal["auto", "cpu", "cuda"]
OptimizerName = Literal["sgd", "adamw"]
Schedule = Literal["constant", "cosine"]
Augment = Literal["keras", "none"]
Normalize = Literal["rescale", "imagenet", "backbone"]
Pool = Literal["avg", "flatten"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"]
BenchMode = Literal["train", "infer", "both"]
Switch = Literal["auto", "on", "off"]
"""A speed choice (`--channels-last`, `--compile`): `auto` lets `tlbench.speed` decide."""
TrackerName = Literal["tensorboard", "mlflow"]
"""A tracker that also receives a run's numbers (`--log`; `tlbench.train.trackers`)."""


def as_switch(value: Any) -> Any:
    """`True`/`False` (the form of earlier configs and of the Python API) as `on`/`off`."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


IMAGE_SIZE = (16, 1024)
"""Square input side in pixels, inclusive: below 16 most backbones shrink to nothing."""

DEFAULT_RECIPE = "keras-vgg19"
"""The reference recipe (docs/training.md, "The reference recipe"): what every command uses unless told."""

SWEEP_SELECT = "10%"
"""The selection split of every sweep cell unless `--select` says otherwise (`tlbench run`: none)."""

RESULTS_DIR = Path("results")
"""Where results go without `--out` (relative to the working directory)."""
RUNS_DIR = RESULTS_DIR / "runs"
"""Runs and baselines (`<time>-<backbone>-<recipe>-f<freeze>-s<seed>`, `<time>-<backbone>-baseline`)."""
SWEEPS_DIR = RESULTS_DIR / "sweeps"
"""Sweep folders: `sweep-<hash of the grid and options>`."""
BENCH_DIR = RESULTS_DIR / "bench"
"""`tlbench bench` result files."""
EVAL_DIR = RESULTS_DIR / "eval"
"""`tlbench eval` folders: `<time>-<backbones>`."""


def choices(literal: Any) -> tuple[str, ...]:
    """The values of a `Literal[...]` type, e.g. `choices(AmpMode)` -> `("auto", "bf16", ...)`."""
    return tuple(get_args(literal))


def bounded(
    default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open=False
) -> Any:
    """A dataclass field with a default and inclusive bounds (exclusive where `*_open`)."""
    return field(default=default, metadata={"bounds": (lo, hi, lo_open, hi_open)})


PANEL_RECIPE = "Recipe and model"
PANEL_DATA = "Data"
PANEL_DEVICE = "Device and speed"
PANEL_DISTRIBUTED = "Distributed (torchrun)"
PANEL_OUTPUT = "Output"
"""The help panels that `tlbench run --help` groups its options in (`option(panel=...)`)."""


def option(
    default: Any = MISSING,
    *,
    help: str,
    panel: str,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    flag: str | None = None,
    cli_type: type | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option: the one place an option is declared.

    `tlbench.cli._schema` makes the flag from it: `--<name>` (`flag` overrides), the field's type
    (a `Literal` gives the choices, a bool `--x/--no-x`; `cli_type` where the flag takes another
    form, e.g. a duration as text), `help` with the bounds appended, and the help `panel`.
    `check` validates the bounds, as `bounded` does.
    """
    metadata: dict[str, Any] = {"help": help, "panel": panel, "flag": flag, "cli_type": cli_type}
    metadata["metavar"] = metavar
    if lo is not None or hi is not None:
        metadata["bounds"] = (lo, hi, lo_open, hi_open)
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def bounds_text(f: Any) -> str:
    """`> 0`, `0-1`, `>= 1`: a field's bounds in short, for help texts ("" without bounds)."""
    bounds = f.metadata.get("bounds")
    if bounds is None:
        return ""
    lo, hi, lo_open, hi_open = bounds
    if lo is not None and hi is not None:
        return f"{'>' if lo_open else '>='} {lo:g}, {'<' if hi_open else '<='} {hi:g}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


def _literal_of(tp: Any) -> tuple[Any, ...] | None:
    """The choices of `Literal[...]` or `Literal[...] | None`, else None."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    if get_origin(tp) in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            if get_origin(arg) is Literal:
                return get_args(arg)
    return None


def _bounds_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        return f"must be in {left}{lo:g}, {hi:g}{right}"
    if lo == 0:
        return "must be positive" if lo_open else "must not be negative"
    if lo is not None:
        return f"must be {'above' if lo_open else 'at least'} {lo:g}"
    return f"must be {'below' if hi_open else 'at most'} {hi:g}"


def check(obj: Any, prefix: str = "") -> None:
    """Validate every field of the dataclass `obj`: literal choices, bounds, finite numbers.

    Args:
        obj: A dataclass instance whose annotations use the types of this module.
        prefix: Prepended to field names in errors (`recipe.` for a nested recipe).

    Raises:
        ConfigError: The first field out of its choices or bounds, or a number that is NaN/inf.
    """
    assert is_dataclass(obj)
    for f in fields(obj):
        check_field(type(obj), f.name, getattr(obj, f.name), prefix)


@functools.cache
def _fields_of(cls: type) -> dict[str, tuple[Any, Any]]:
    """Each field of dataclass `cls` with its resolved type hint (resolved once per class)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints.get(f.name)) for f in fields(cls)}


def check_field(cls: type, name: str, value: Any, prefix: str = "") -> None:
    """Validate one value against the choices and bounds of field `name` of dataclass `cls`.

    Code that takes such a value on its own (`build_model(dropout=...)`) checks it with the same
    rule as the dataclass, instead of a copy of it.

    Raises:
        ConfigError: Out of its choices or bounds, or a number that is NaN/inf.
    """
    if value is None:
        return
    f, hint = _fields_of(cls)[name]
    label = prefix + name
    allowed = _literal_of(hint)
    if allowed is not None and value not in allowed:
        raise ConfigError(label, f"{value!r} is not one of {', '.join(map(str, allowed))}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(label, f"{value} is not a finite number")
    bounds = f.metadata.get("bounds")
    if bounds is not None and isinstance(value, int | float) and not isinstance(value, bool):
        lo, hi, lo_open, hi_open = bounds
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            raise ConfigError(label, f"{value:g} {_bounds_text(lo, hi, lo_open, hi_open)}")
