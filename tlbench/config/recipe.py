"""`Recipe`: every hyperparameter of a training recipe in one frozen, checked dataclass.

The fields' metadata (`tlbench.options.option`) carries their bounds, help text and help panel, so
the recipe files (`recipe_file`), the registry (`recipes`), the `tlbench run` and `tlbench sweep`
flags (one per field: `--lr`, `--weight-decay`, ...) and `tlbench recipes` all read one schema.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tlbench import options
from tlbench.errors import UsageError
from tlbench.options import Augment, Interpolation, Normalize, OptimizerName, Pool, Schedule, option

_RECIPE = options.PANEL_RECIPE


@dataclass(frozen=True)
class Recipe:
    """A training recipe: every hyperparameter of the loss, optimizer, schedule and input.

    Built values are checked against their choices and bounds (`tlbench.options.check`), so a
    `Recipe` that exists is valid. Field docs are what `tlbench recipes` shows.
    """

    name: str
    summary: str
    optimizer: OptimizerName = option(
        help="sgd (Keras' SGD: coupled weight decay) or adamw (decoupled, on weights only).", panel=_RECIPE
    )
    lr: float = option(
        1e-4, help="Learning rate (the peak, after warm-up).", panel=_RECIPE, lo=0.0, hi=10.0, lo_open=True
    )
    momentum: float = option(0.9, help="SGD momentum.", panel=_RECIPE, lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = option(False, help="Nesterov momentum (SGD).", panel=_RECIPE)
    weight_decay: float = option(
        0.0,
        help="Weight decay (SGD: coupled L2 on every parameter; AdamW: decoupled).",
        panel=_RECIPE,
        lo=0.0,
        hi=10.0,
    )
    schedule: Schedule = option(
        "constant", help="Learning rate per step: constant, or cosine to 0.", panel=_RECIPE
    )
    warmup_epochs: float = option(
        0.0, help="Linear warm-up from 0, in epochs (fractions allowed).", panel=_RECIPE, lo=0.0, hi=1e4
    )
    batch_size: int = option(
        32, help="The global batch (divided among torchrun's processes).", panel=_RECIPE, lo=1, hi=65536
    )
    epochs: int = option(1000, help="Epochs to train.", panel=_RECIPE, lo=1, hi=100_000)
    image_size: int = option(
        224, help="Square input side in pixels (images are resized once, when decoded).", panel=_RECIPE,
        lo=options.IMAGE_SIZE[0], hi=options.IMAGE_SIZE[1],
    )  # fmt: skip
    interpolation: Interpolation = option(
        "nearest", help="Resize filter when decoding (PIL); nearest is Keras' load_img.", panel=_RECIPE
    )
    augment: Augment = option(
        "keras", help="Training augmentation: Keras' ImageDataGenerator (batched on the device) or none.",
        panel=_RECIPE, flag="--aug",
    )  # fmt: skip
    normalize: Normalize = option(
        "rescale", help="Input scaling: x/255 (as the original), ImageNet's or the weights' own mean/std.",
        panel=_RECIPE,
    )  # fmt: skip
    pool: Pool = option(
        "avg", help="How the feature map enters the head: global average or flatten.", panel=_RECIPE
    )
    hidden: int = option(
        512, help="Width of the head's hidden Dense layer (+ ReLU).", panel=_RECIPE, lo=1, hi=65536
    )
    dropout: float = option(
        0.3, help="Dropout before the output layer.", panel=_RECIPE, lo=0.0, hi=1.0, hi_open=True
    )
    head_l2: float = option(
        1e-4, help="Keras' l2 on the hidden Dense kernel: head_l2 * sum(W**2) added to the loss.",
        panel=_RECIPE,
        lo=0.0, hi=10.0,
    )  # fmt: skip
    label_smoothing: float = option(
        0.0, help="Label smoothing of the cross-entropy.", panel=_RECIPE, lo=0.0, hi=1.0, hi_open=True
    )
    freeze: str = "none"  # the recipe's default freeze spec (a run's `freeze` overrides it)
    search: tuple[str, ...] = ()
    """The search spaces `tlbench sweep --tune` draws this recipe's values from, where they differ
    from the defaults (`lr=1e-5:1e-2:log`, as `--space` writes them; `--space` wins). A recipe file's
    `search:` section, checked by `tlbench.config.recipe_file`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "search", tuple(self.search))  # a list when read from config.json
        options.check(self, prefix="")

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with the non-None overrides applied (and checked)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UsageError(f"unknown recipe field(s): {', '.join(unknown)}", f"known: {', '.join(known)}")
        return Recipe(**(asdict(self) | {k: v for k, v in overrides.items() if v is not None}))
