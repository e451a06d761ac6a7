"""The fully resolved configuration of one run: a recipe, its overrides and the run's own options.

`run_config` builds one from a recipe name and overrides (the Python API, the CLI and the sweep
all go through it); a `RunConfig` that exists has been checked (`tlbench.options.check`). It is
written verbatim to the run directory's `config.json` and is all `--resume` needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from tlbench import options
from tlbench._util import safe_name
from tlbench.errors import ConfigError, UsageError
from tlbench.options import AmpMode, Placement, Switch, bounded
from tlbench.train.recipes import Recipe, get_recipe

RETIRED_FIELDS = frozenset({"conv_grad"})
"""`config.json` fields of earlier versions that are read and ignored (the run resumes without them)."""

DataFormat = Literal["imagefolder", "ravi-csv", "pickle", "parquet"]
DistBackend = Literal["auto", "nccl", "gloo"]


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on; checked when built.

    Attributes:
        backbone: timm model name.
        recipe: The recipe with the overrides applied.
        freeze: Freeze spec: `N` (Keras indexing for VGG), `P%`, `none` or `all`.
        seed: Seeds initialisation, order, augmentation and dropout.
        data: A data folder or `synthetic[:CxN[@SIZE]]`; None is the data root.
        data_format: Force a layout instead of detecting it.
        split_seed: Seed of the per-class split of pooled forms (csv, pickle).
        skip_corrupt: Skip (and count) corrupt images instead of stopping.
        pretrained: timm's pretrained weights (through the Hugging Face cache).
        weights: Local weights (`.safetensors`, `.pth`, `.bin`, `local-dir:FOLDER`); wins over pretrained.
        device: `auto`, `cpu`, `cuda` or `cuda:N`.
        amp: `auto` (bf16 on CUDA, and on CPUs with AMX or AVX512-BF16; `runtime.choose_amp`),
            `bf16`, `fp16` (CUDA only) or `off`.
        channels_last: NHWC memory layout for the model and the input: `auto` (NHWC for
            convolutional networks on CUDA, NCHW on the CPU; `tlbench.speed`), `on` or `off`.
            `True`/`False` mean on/off.
        compile: `torch.compile` the model (falls back to eager with a warning): `auto` (on a GPU,
            for long runs; `tlbench.speed`), `on` or `off`. `True`/`False` mean on/off.
        threads: Intra-op CPU threads; None: the cores this process may use (`tlbench.speed`).
        data_on_device: Where the packed images live: `auto`, `cpu` or `cuda`.
        feature_cache: A linear probe without augmentation computes the features once.
        max_time: Stop cleanly before this many seconds of wall time; None: no limit.
        out: The run directory; None: a new folder under `results/runs/`.
        dist_backend: Under torchrun (or Slurm tasks): `auto` (nccl on CUDA, gloo on the CPU),
            `nccl` or `gloo`.
        sync_bn: Synchronise BatchNorm statistics across processes (CUDA only).
        log: Trackers that also receive the run's numbers: `tensorboard`, `mlflow`.
    """

    backbone: str
    recipe: Recipe
    freeze: str
    seed: int = 0
    data: str | None = "synthetic"
    data_format: DataFormat | None = None
    split_seed: int = 0
    skip_corrupt: bool = False
    pretrained: bool = True
    weights: str | None = None
    device: str = "auto"
    amp: AmpMode = "auto"
    channels_last: Switch = "auto"
    compile: Switch = "auto"
    threads: int | None = bounded(None, 1)
    data_on_device: Placement = "auto"
    feature_cache: bool = True
    max_time: float | None = bounded(None, 0.0)
    out: str | None = None
    dist_backend: DistBackend = "auto"
    sync_bn: bool = False
    log: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise UsageError("recipe must be a Recipe", "build the config with tlbench.train.run_config")
        from tlbench.speed import as_switch
        from tlbench.train.trackers import check_log

        object.__setattr__(self, "log", check_log(self.log))  # names checked; "a,b" or a list -> a tuple
        for name in ("channels_last", "compile"):  # a bool (earlier configs, API): on/off
            object.__setattr__(self, name, as_switch(getattr(self, name)))
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


RECIPE_OVERRIDES = (
    "epochs",
    "batch_size",
    "lr",
    "image_size",
    "normalize",
    "augment",
    "pool",
    "interpolation",
)
"""Recipe values a run may override by name (`run_config(..., lr=1e-3)`, `tlbench run --lr`)."""


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
