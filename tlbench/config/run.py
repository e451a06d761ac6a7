"""The fully resolved configuration of one run: a recipe, its overrides and the run's own options.

`run_config` builds one from a recipe name and overrides (the Python API, the CLI and the sweep
all go through it); a `RunConfig` that exists has been checked (`tlbench.options.check`). It is
written verbatim to the run directory's `config.json` and is all `--resume` needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from tlbench import options
from tlbench._util import safe_name
from tlbench.config.recipe import Recipe
from tlbench.config.recipes import get_recipe
from tlbench.errors import ConfigError, UsageError
from tlbench.options import AmpMode, Placement, Switch, TrackerName, as_switch, option

RETIRED_FIELDS = frozenset({"conv_grad"})
"""`config.json` fields of earlier versions that are read and ignored (the run resumes without them)."""

_RECIPE, _DATA, _SPEED = options.PANEL_RECIPE, options.PANEL_DATA, options.PANEL_DEVICE
_DIST, _OUT = options.PANEL_DISTRIBUTED, options.PANEL_OUTPUT

DataFormat = Literal["imagefolder", "ravi-csv", "pickle", "parquet"]
DistBackend = Literal["auto", "nccl", "gloo"]


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on; checked when built.

    `backbone` is a timm model name and `recipe` the recipe with its overrides applied; every other
    field is a `tlbench run` option, and its help text (the field's `option` metadata) is what
    `tlbench run --help` shows. `channels_last` and `compile` also take `True`/`False` (on/off).
    """

    backbone: str
    recipe: Recipe
    freeze: str = option(
        help="N (the first N layers; Keras indexing for VGG), P% of the parameters, none or all. "
        "Default: the recipe's.",
        panel=_RECIPE,
    )
    seed: int = option(0, help="Seed of initialisation, order, augmentation and dropout.", panel=_RECIPE)
    data: str | None = option(
        "synthetic",
        help="A data folder, or synthetic[:CxN[@SIZE]] (C classes x N images). Default: the data root.",
        panel=_DATA,
    )
    data_format: DataFormat | None = option(None, help="Force a layout instead of detecting it.", panel=_DATA)
    split_seed: int = option(
        0, help="Seed of the per-class split of pooled layouts (csv, pickle).", panel=_DATA
    )
    select: str = option(
        "none",
        help="Hold out a selection split, per class and seeded by --split-seed, from the training images "
        "(never validation): P% or N per class, or none. The best epoch is then chosen on it.",
        panel=_DATA,
        metavar="P%|N|none",
    )
    skip_corrupt: bool = option(
        False, help="Skip (and count) corrupt images instead of stopping.", panel=_DATA
    )
    pretrained: bool = option(
        True,
        help="ImageNet weights through timm (the Hugging Face cache; HF_HUB_OFFLINE honoured).",
        panel=_RECIPE,
    )
    weights: str | None = option(
        None,
        help="Local weights: .safetensors, .pth, .bin or local-dir:FOLDER (wins over pretrained).",
        panel=_RECIPE,
    )
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.", panel=_SPEED)
    amp: AmpMode = option(
        "auto",
        help="Autocast: auto is bf16 on CUDA and on CPUs with AMX or AVX512-BF16, else fp32 (off).",
        panel=_SPEED,
    )
    channels_last: Switch = option(
        "auto", help="NHWC memory layout: auto is NHWC for convolutional networks on CUDA, NCHW on the CPU.",
        panel=_SPEED,
    )  # fmt: skip
    compile: Switch = option(
        "auto", help="torch.compile: auto is on for GPU runs of 2,000+ steps, off on the CPU.", panel=_SPEED
    )
    threads: int | None = option(
        None, help="CPU threads. Default: the cores this process may use, shared by a node's ranks.",
        panel=_SPEED, lo=1,
    )  # fmt: skip
    data_on_device: Placement = option("auto", help="Where the packed images live.", panel=_SPEED)
    feature_cache: bool = option(
        True,
        help="Linear probe (--freeze all) without augmentation: compute the features once.",
        panel=_SPEED,
    )
    dist_backend: DistBackend = option(
        "auto", help="Under torchrun: auto (nccl on CUDA, gloo on the CPU), nccl or gloo.", panel=_DIST
    )
    sync_bn: bool = option(
        False, help="Under torchrun on CUDA: BatchNorm statistics across GPUs.", panel=_DIST
    )
    max_time: float | None = option(
        None, help="Stop cleanly before this wall-clock budget (90s, 15m, 2h).", panel=_OUT, lo=0.0,
        cli_type=str, metavar="DURATION",
    )  # fmt: skip
    out: str | None = option(
        None,
        help="Run directory. Default: results/runs/<time>-<backbone>-<recipe>-f<freeze>-s<seed>.",
        panel=_OUT,
    )
    log: tuple[str, ...] = option(
        (), help="Also log to tensorboard and/or mlflow (comma-separated; optional extras).", panel=_OUT,
        cli_type=list[str], metavar="TRACKERS",
    )  # fmt: skip

    trial: str | None = None
    """Set on a tuning trial only (`<study>#<number>`, by `tlbench.sweep.tune`); not a flag."""

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise UsageError("recipe must be a Recipe", "build the config with tlbench.config.run_config")
        object.__setattr__(self, "log", check_log(self.log))  # names checked; "a,b" or a list -> a tuple
        for name in ("channels_last", "compile"):  # a bool (earlier configs, API): on/off
            object.__setattr__(self, name, as_switch(getattr(self, name)))
        object.__setattr__(self, "select", check_select(self.select))  # "10 %" -> "10%", "None" -> "none"
        options.check(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the recipe nested), as config.json stores them."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """The inverse of `to_dict`; unknown keys are an error (a config of another version)."""
        known = {f.name for f in fields(cls)}
        # Fields of earlier versions that no longer change a run: `conv_grad` (a custom CPU weight
        # gradient, equal to PyTorch's up to rounding) resumes with PyTorch's own kernels.
        values = {k: v for k, v in values.items() if k not in RETIRED_FIELDS}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown run config field(s): {', '.join(unknown)}")
        return cls(
            **(dict(values) | {"recipe": Recipe(**values["recipe"]), "log": tuple(values.get("log", ()))})
        )

    def run_name(self, now: datetime | None = None) -> str:
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{safe_name(self.backbone)}-{self.recipe.name}-f{safe_name(self.freeze)}-s{self.seed}"

    def default_out(self) -> Path:
        return options.RUNS_DIR / self.run_name()


RECIPE_OVERRIDES = tuple(f.name for f in fields(Recipe) if "help" in f.metadata)
"""Recipe values a run may override by name (`run_config(..., lr=1e-3)`, `tlbench run --lr`): every
recipe field declared as an option, the same ones `tlbench run` and `tlbench sweep` have flags for."""


def run_config(
    backbone: str,
    recipe: str = options.DEFAULT_RECIPE,
    *,
    freeze: str | None = None,
    data: str | Path | None = None,
    max_time: str | float | None = None,
    out: str | Path | None = None,
    **values: Any,
) -> RunConfig:
    """A run of `backbone` with a named recipe; recipe fields and run options may be overridden.

    Args:
        backbone: timm model name.
        recipe: A registered recipe name (see `tlbench recipes`).
        freeze: Freeze spec; None takes the recipe's own.
        data: Data folder or synthetic spec.
        max_time: Seconds, or a duration such as `90s`, `15m`, `2h`, `1h30m`.
        out: Run directory.
        **values: Recipe fields (None keeps the recipe's value; the CLI exposes `RECIPE_OVERRIDES`)
            and `RunConfig` fields.

    Raises:
        ConfigError: A value outside its choices or bounds (names the field).
        UsageError: An unknown recipe or field.
    """
    base = get_recipe(recipe)
    recipe_fields = {f.name for f in fields(Recipe)} - {"name", "summary", "freeze"}
    overrides = {k: values.pop(k) for k in sorted(recipe_fields) if k in values}
    if values.get("weights") is not None:
        values["weights"] = absolute_source(values["weights"])
    run_fields = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(values) - run_fields)
    if unknown:
        raise UsageError(f"unknown run option(s): {', '.join(unknown)}")
    return RunConfig(
        backbone=backbone,
        recipe=base.replace(**overrides),
        freeze=str(freeze if freeze is not None else base.freeze),
        data=absolute_source(data),
        max_time=parse_duration(max_time) if isinstance(max_time, str) else max_time,
        out=str(out) if out is not None else None,
        **values,
    )


def absolute_source(spec: str | Path | None) -> str | None:
    """A data or weights location as an absolute path, so config.json (and `--resume`) works from
    any directory: `data/mini` -> `/home/me/data/mini`, `local-dir:w` -> `local-dir:/home/me/w`.
    Synthetic specs and None are kept as they are."""
    if spec is None:
        return None
    text = str(spec)
    if text.startswith("synthetic"):
        return text
    prefix = "local-dir:" if text.startswith("local-dir:") else ""
    return prefix + str(Path(text.removeprefix(prefix)).expanduser().absolute())


def parse_duration(text: str | None) -> float | None:
    """`'90'`, `'90s'`, `'15m'`, `'2h'`, `'1h30m'` -> seconds (pandas' Timedelta; a bare number: s)."""
    if text is None or not text.strip():
        return None
    import pandas as pd

    text = text.strip()
    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else pd.Timedelta(text).total_seconds()
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:  # NaN (unparsable) or negative
        raise ConfigError("max_time", f"{text!r} is not a duration", "use e.g. 90s, 15m, 2h or 1h30m")
    return seconds


def parse_select(spec: str) -> tuple[Literal["fraction", "count"], float] | None:
    """A checked `select` spec: `"none"` -> None, `"10%"` -> `("fraction", 0.1)`, `"5"` -> `("count", 5)`.

    Raises:
        ConfigError: Not `P%` with 0 < P < 100, not a whole number N >= 1, and not `none` (field
            `select`, so the CLI says `--select`).
    """
    text = str(spec).strip().lower().replace(" ", "")
    if text in ("none", ""):
        return None
    hint = "use P% of each class's training images (e.g. 10%), N images per class (e.g. 5), or none"
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ConfigError("select", f"{spec!r} is not a percentage", hint) from None
        if not 0 < percent < 100:
            raise ConfigError("select", f"{spec} must be above 0% and below 100%", hint)
        return "fraction", percent / 100
    try:
        count = int(text)
    except ValueError:
        raise ConfigError("select", f"{spec!r} is not P%, N or none", hint) from None
    if count < 1:
        raise ConfigError("select", f"{spec} must be at least 1 image per class", hint)
    return "count", count


def check_select(spec: str) -> str:
    """The `select` spec in its one written form (`none`, `12.5%`, `5`), checked (`parse_select`)."""
    parsed = parse_select(spec)
    if parsed is None:
        return "none"
    kind, value = parsed
    return f"{100 * value:g}%" if kind == "fraction" else str(int(value))


def check_log(names: Iterable[str] | str | None) -> tuple[str, ...]:
    """The tracker names of `RunConfig.log`, checked: `"tensorboard,mlflow"`, a list or None.

    Returns:
        The names in the order given, each once.

    Raises:
        ConfigError: A name that is not a tracker (field `log`, so the CLI says `--log`).
    """
    if names is None:
        return ()
    items = [names] if isinstance(names, str) else list(names)
    split = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    allowed = options.choices(TrackerName)
    for name in split:
        if name not in allowed:
            raise ConfigError("log", f"{name!r} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(split))
