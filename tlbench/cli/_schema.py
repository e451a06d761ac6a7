"""Command-line options made from the config dataclasses, so an option is declared once.

A field declared with `tlbench.options.option(...)` (`Recipe`, `RunConfig`, `ClusterOptions`)
carries its help text, help panel, bounds and, where it differs from `--<name>`, its flag; its type
gives the choices (a `Literal`, shown as `a|b|c` and checked with the other bounds where the config
is built, so a wrong value is the usual one-line error naming the flag) or the `--x/--no-x` form (a
bool). `parameters` turns such fields into Typer parameters
and `with_options` adds them to a command function, which receives them as keyword arguments.

Every generated option defaults to None, "not given": the command passes on only what was given,
so a recipe keeps its own values, `--resume` can refuse options that would be ignored, and a sweep
forwards exactly the options typed. The help shows each field's real default beside it.

Importing this module is cheap: the config package holds dataclasses only.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, fields
from typing import Annotated, Any

import typer

from tlbench import options
from tlbench.config.cluster import ClusterOptions
from tlbench.config.eval import EvalOptions
from tlbench.config.recipe import Recipe
from tlbench.config.run import RunConfig
from tlbench.config.tuning import RaceOptions, TuneOptions

SCHEMA_CLASSES: tuple[type, ...] = (Recipe, RunConfig)
"""The dataclasses whose fields are `tlbench run` options (`tlbench sweep` shares them)."""
_FLAGGED: tuple[type, ...] = (*SCHEMA_CLASSES, ClusterOptions, EvalOptions, TuneOptions, RaceOptions)
"""Every dataclass whose fields are some command's options (`flag_of` looks in each)."""


def cli_fields(cls: type) -> list[Field[Any]]:
    """The fields of dataclass `cls` that are command-line options (declared with `option`)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def flag_of(name: str) -> str | None:
    """The flag of config field `name` (`image_size` -> `--image-size`, `augment` -> `--aug`), or
    None where no command has one."""
    for cls in _FLAGGED:
        for f in cli_fields(cls):
            if f.name == name:
                return f.metadata["flag"] or "--" + name.replace("_", "-")
    return None


def _base_type(hint: Any) -> Any:
    """`X | None` -> `X`; any other hint as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _default_text(cls: type, f: Field[Any], flag: str) -> str | None:
    """What the help shows as the default: the recipe's own for a recipe field, else the field's."""
    if cls is Recipe:
        return f"{options.DEFAULT_RECIPE}: {f.default}" if f.default is not MISSING else "the recipe's"
    if f.default is MISSING or f.default is None or f.default == ():
        return None
    if isinstance(f.default, bool):
        return flag if f.default else "--no-" + flag.removeprefix("--")
    return str(f.default)


def _parameter(
    cls: type, f: Field[Any], hint: Any, default: str | None = None, panel: str | None = None
) -> inspect.Parameter:
    meta = f.metadata
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    base = meta["cli_type"] or _base_type(hint)
    metavar = meta["metavar"]
    if typing.get_origin(base) is typing.Literal:  # checked where the config is built: one-line errors
        metavar = metavar or "|".join(map(str, typing.get_args(base)))
        base = str
    decls = (f"{flag}/--no-{flag.removeprefix('--')}",) if base is bool else (flag,)
    bounds = options.bounds_text(f)
    info = typer.Option(
        *decls,
        help=meta["help"] + (f" [{bounds}]" if bounds else ""),
        rich_help_panel=panel or meta["panel"],
        show_default=default or _default_text(cls, f, flag) or False,
        metavar=metavar,
    )
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[base | None, info]
    )


def parameters(
    *classes: type,
    exclude: Iterable[str] = (),
    defaults: dict[str, str] | None = None,
    panel: str | None = None,
) -> list[inspect.Parameter]:
    """Typer parameters for the option fields of `classes`, in declaration order, except `exclude`.

    `defaults` names the default the help shows where a command applies one of its own (the sweep's
    `--select 10%`); the option still arrives as None when not given, and the command fills it in.
    `panel` puts them all in one help panel of the command's own (the sweep's `--protocols`).
    """
    skip, shown = set(exclude), defaults or {}
    params: list[inspect.Parameter] = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in cli_fields(cls):
            if f.name not in skip:
                params.append(_parameter(cls, f, hints[f.name], shown.get(f.name), panel))
    return params


def with_options(params: list[inspect.Parameter]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add `params` to a command whose last parameter is `**options`; it receives them there.

    Typer reads a command's parameters from its signature, so the wrapper carries the command's own
    parameters (their annotations resolved) followed by `params`.
    """

    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(command).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        names = {p.name for p in own}
        added = [p for p in params if p.name not in names]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return command(*args, **kwargs)

        wrapper.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *added)}
        del wrapper.__wrapped__  # typing and inspect must read the wrapper's own signature
        return wrapper

    return wrap


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The generated options that were given (not None), as config keyword arguments."""
    return {name: value for name, value in values.items() if value is not None}
