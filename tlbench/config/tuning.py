"""`TuneOptions` and `RaceOptions`: a sweep's tuning budget and its races (`tlbench sweep --tune`,
`--race`), and the search spaces of the recipe values it may tune.

Their fields are the sweep's flags (`tlbench.options.option`: help, panel, bounds), read by the CLI
and by `tlbench.sweep.tune` and `tlbench.sweep.race`. Dataclasses only: importing this is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

from tlbench.config.recipe import Recipe
from tlbench.errors import ConfigError
from tlbench.options import check, check_field, option

_TUNE = "Tuning (the same budget for every configuration)"
_RACE = "Races (stop clear losers early)"

Scale = Literal["log", "linear"]


@dataclass(frozen=True)
class Space:
    """The range one recipe value is searched over: [lo, hi], on a log or a linear scale."""

    name: str
    lo: float
    hi: float
    scale: Scale = "log"

    def text(self) -> str:
        return f"{self.name}={self.lo:g}:{self.hi:g}:{self.scale}"


DEFAULT_SPACES: dict[str, Space] = {
    s.name: s
    for s in (
        Space("lr", 1e-5, 1e-1),
        Space("weight_decay", 1e-6, 1e-1),
        Space("label_smoothing", 0.0, 0.2, "linear"),
        Space("dropout", 0.0, 0.5, "linear"),
        Space("momentum", 0.5, 0.99, "linear"),
        Space("head_l2", 1e-6, 1e-2),
        Space("warmup_epochs", 0.0, 5.0, "linear"),
    )
}
"""The search space of each tunable recipe value unless `--space` (or a recipe file) says otherwise."""


def parse_space(text: str) -> Space:
    """`lr=1e-5:1e-2:log` (or `...:linear`, the scale defaulting to log) as a checked `Space`.

    Raises:
        ConfigError: Not NAME=LO:HI[:SCALE], an unknown name, bounds out of the recipe field's
            own, LO >= HI, or a log scale that reaches 0 (field `space`: the CLI says `--space`).
    """
    hint = "e.g. --space lr=1e-5:1e-2:log or --space dropout=0:0.5:linear"
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    name = name.strip()
    if not rest or len(parts) not in (2, 3):
        raise ConfigError("space", f"{text!r} is not NAME=LO:HI[:log|linear]", hint)
    if name not in DEFAULT_SPACES:
        raise ConfigError("space", f"{name!r} is not a tunable value", f"one of {', '.join(DEFAULT_SPACES)}")
    scale = parts[2].strip() if len(parts) == 3 else "log"
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError("space", f"{text!r}: the bounds are not numbers", hint) from None
    if scale not in ("log", "linear"):
        raise ConfigError("space", f"{text!r}: the scale {scale!r} is not log or linear", hint)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi or (scale == "log" and lo <= 0):
        raise ConfigError("space", f"{text!r} needs LO < HI (and LO > 0 on a log scale)", hint)
    for bound in (lo, hi):
        try:
            check_field(Recipe, name, bound)
        except ConfigError as exc:
            raise ConfigError("space", f"{text!r}: {name} {exc.problem}", hint) from None
    return Space(name, lo, hi, scale)  # type: ignore[arg-type]


def tuned_names(tune: str | None) -> tuple[str, ...]:
    """The recipe values `--tune` names (`"lr,weight_decay"`), checked; () without `--tune`.

    Raises:
        ConfigError: A name that is not a tunable recipe value (field `tune`).
    """
    names = tuple(dict.fromkeys(n.strip().replace("-", "_") for n in (tune or "").split(",") if n.strip()))
    for n in names:
        if n not in DEFAULT_SPACES:
            raise ConfigError("tune", f"{n!r} is not a tunable value", f"one of {', '.join(DEFAULT_SPACES)}")
    return names


@dataclass(frozen=True)
class TuneOptions:
    """How each configuration of a sweep is tuned before its final runs (`tlbench.sweep.tune`).

    Every configuration (backbone x freeze x recipe) gets its own Optuna study of `trials` trials
    of `tune_epochs` epochs, scored on the selection split; then its final runs use the best
    trial's values.
    """

    tune: str | None = option(
        None,
        help="Tune these recipe values for every configuration before its final runs, comma-separated "
        "(lr, weight_decay, label_smoothing, dropout, momentum, head_l2, warmup_epochs).",
        panel=_TUNE,
        metavar="NAMES",
    )
    trials: int = option(16, help="Trials per configuration (the same for every one).", panel=_TUNE, lo=1)
    tune_epochs: int | None = option(
        None, help="Epochs of each trial. Default: --epochs.", panel=_TUNE, lo=1, hi=100_000
    )
    space: tuple[str, ...] = option(
        (),
        help="A search space NAME=LO:HI[:log|linear] (repeatable), instead of the default one.",
        panel=_TUNE,
        cli_type=list[str],
        metavar="SPACE",
    )
    storage: str | None = option(
        None,
        help="The Optuna storage URL (postgresql://..., mysql://...) for a cluster. "
        "Default: sqlite:///SWEEP/tune.db.",
        panel=_TUNE,
        metavar="URL",
    )
    refit: bool = option(
        True,
        help="Final runs train on the training split with the selection images (refit) or without.",
        panel=_TUNE,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "space", tuple(self.space or ()))
        check(self)
        tuned_names(self.tune)
        for text in self.space:
            parse_space(text)

    @property
    def names(self) -> tuple[str, ...]:
        return tuned_names(self.tune)

    def spaces(self, recipe: Sequence[str] = ()) -> dict[str, Space]:
        """The search space of each tuned value: `--space` where given, else the recipe's own
        (`Recipe.search`, a recipe file's `search:` section), else the default."""
        given = {s.name: s for s in map(parse_space, (*recipe, *self.space))}  # --space last: it wins
        return {n: given.get(n, DEFAULT_SPACES[n]) for n in self.names}


@dataclass(frozen=True)
class RaceOptions:
    """When a sweep stops a cell that is clearly behind (`tlbench.sweep.race`)."""

    race: bool = option(
        False,
        help="Stop a cell whose selection top-1 is significantly below the leader's on the same "
        "images (paired exact McNemar test), after --race-after epochs.",
        panel=_RACE,
    )
    race_after: int = option(2, help="Epochs every cell trains before it can be stopped.", panel=_RACE, lo=1)
    race_p: float = option(
        0.01, help="The p-value below which a cell is behind.", panel=_RACE, lo=0.0, hi=1.0, lo_open=True
    )

    def __post_init__(self) -> None:
        check(self)


TUNE_FIELDS = tuple(f.name for f in fields(TuneOptions))
RACE_FIELDS = tuple(f.name for f in fields(RaceOptions))
