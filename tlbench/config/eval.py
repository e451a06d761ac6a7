"""`EvalOptions`: every setting of a `tlbench eval` evaluation of frozen features, checked when built.

One feature extraction per backbone feeds three protocols (docs/eval.md): a linear probe, a
weighted k-NN classifier and few-shot episodes. Each field is also a `tlbench eval` option
(`tlbench.options.option`); the whole record is written to the evaluation folder's `eval.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from tlbench import options
from tlbench.config.run import DataFormat, absolute_source, check_select
from tlbench.errors import ConfigError
from tlbench.options import AmpMode, Interpolation, Normalize, Pool, option

Protocol = Literal["linear", "knn", "fewshot"]
PROTOCOLS: tuple[str, ...] = ("linear", "knn", "fewshot")
EVAL_SELECT = "20%"
"""The selection split every protocol chooses its hyperparameter on (Kornblith et al.'s 20 %)."""

SWEEP_FIELDS: tuple[str, ...] = ("protocols", "ways", "shots", "queries", "episodes")
"""The fields that are `tlbench sweep` options too: `--protocols` evaluates every backbone of the
grid after its cells (`tlbench.sweep.evaluate`); the other settings are the sweep's own."""
PANEL_SWEEP = "tlbench eval of every backbone, after the cells, into SWEEP/eval"

PANEL_PROTOCOLS = "Protocols"
_MODEL, _DATA = options.PANEL_RECIPE, options.PANEL_DATA
_SPEED, _OUT = options.PANEL_DEVICE, options.PANEL_OUTPUT


@dataclass(frozen=True)
class EvalOptions:
    """What a `tlbench eval` run depends on, besides its backbones; every field is an option."""

    protocols: tuple[str, ...] = option(
        PROTOCOLS, help="Comma-separated: linear, knn, fewshot.", panel=PANEL_PROTOCOLS,
        cli_type=str, metavar="PROTOCOLS",
    )  # fmt: skip
    ways: int = option(5, help="Few-shot: classes per episode (N-way).", panel=PANEL_PROTOCOLS, lo=2)
    shots: tuple[int, ...] = option(
        (1, 5), help="Few-shot: support images per class, comma-separated (K-shot).", panel=PANEL_PROTOCOLS,
        cli_type=str, metavar="K[,K...]",
    )  # fmt: skip
    queries: int = option(15, help="Few-shot: query images per class.", panel=PANEL_PROTOCOLS, lo=1)
    episodes: int = option(600, help="Few-shot: episodes per shot setting.", panel=PANEL_PROTOCOLS, lo=2)
    seed: int = option(0, help="Seed of the episodes and of a random init.", panel=PANEL_PROTOCOLS)
    data: str | None = option(
        None,
        help="A data folder, or synthetic[:CxN[@SIZE]] (C classes x N images). Default: the data root.",
        panel=_DATA,
    )
    data_format: DataFormat | None = option(None, help="Force a layout instead of detecting it.", panel=_DATA)
    split_seed: int = option(0, help="Seed of the per-class split of pooled layouts.", panel=_DATA)
    select: str = option(
        EVAL_SELECT,
        help="The selection split the probe's L2 strength and k-NN's k are chosen on, held out of the "
        "training images: P% or N per class.",
        panel=_DATA, metavar="P%|N",
    )  # fmt: skip
    skip_corrupt: bool = option(False, help="Skip (and count) corrupt images.", panel=_DATA)
    image_size: int = option(224, help="Square input side in pixels.", panel=_MODEL, lo=16, hi=1024)
    interpolation: Interpolation = option("bilinear", help="Resize filter.", panel=_MODEL)
    normalize: Normalize = option("backbone", help="Input scaling (default: the weights' own).", panel=_MODEL)
    pool: Pool = option("avg", help="Feature pooling: the backbone's global pool, or flatten.", panel=_MODEL)
    pretrained: bool = option(True, help="ImageNet weights through timm.", panel=_MODEL)
    weights: str | None = option(
        None, help="Local weights: .safetensors, .pth, .bin or local-dir:FOLDER.", panel=_MODEL
    )
    batch_size: int = option(128, help="Images per extraction batch.", panel=_SPEED, lo=1)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.", panel=_SPEED)
    amp: AmpMode = option("auto", help="Extraction autocast: auto is bf16 on CUDA, else fp32.", panel=_SPEED)
    feature_cache: bool = option(
        True, help="Keep and reuse the features in the user cache (shared with run --freeze all).",
        panel=_SPEED,
    )  # fmt: skip
    out: str | None = option(None, help="Evaluation folder. Default: results/eval/<time>.", panel=_OUT)

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocols", parse_protocols(self.protocols))
        object.__setattr__(self, "shots", parse_shots(self.shots))
        object.__setattr__(self, "select", check_select(self.select))
        if self.select == "none":
            raise ConfigError("select", "none leaves nothing to choose on", "use e.g. 20% or 5")
        for name in ("data", "weights"):
            object.__setattr__(self, name, absolute_source(getattr(self, name)))
        if self.out is not None:
            object.__setattr__(self, "out", str(self.out))
        options.check(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _items(value: Any) -> list[str]:
    items = [value] if isinstance(value, str | int) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def parse_protocols(value: Any) -> tuple[str, ...]:
    """`"linear,knn"` (or a list) -> `("linear", "knn")`, in the canonical order, each once."""
    names = _items(value)
    for name in names:
        if name not in PROTOCOLS:
            raise ConfigError("protocols", f"{name!r} is not one of {', '.join(PROTOCOLS)}")
    if not names:
        raise ConfigError("protocols", "names none", f"use some of {','.join(PROTOCOLS)}")
    return tuple(p for p in PROTOCOLS if p in names)


def parse_shots(value: Any) -> tuple[int, ...]:
    """`"1,5"` (or a list) -> `(1, 5)`: whole numbers >= 1, each once, in order."""
    try:
        shots = [int(s) for s in _items(value)]
    except ValueError:
        raise ConfigError("shots", f"{value!r} are not whole numbers", "e.g. --shots 1,5") from None
    if not shots or min(shots) < 1:
        raise ConfigError("shots", f"{value!r} must be whole numbers >= 1", "e.g. --shots 1,5")
    return tuple(sorted(set(shots)))
