"""Named, frozen training recipes: every hyperparameter of a recipe in one place.

`keras-vgg19` is the reference recipe of the original Keras experiment, to the parameter (see
README, "The reference recipe"); `timm-ft` is a small modern fine-tuning recipe to compare it with.
A recipe value can be overridden on the command line; the resolved values go to config.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from tlbench.errors import UsageError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")
AUGMENTS = ("keras", "none")
NORMALIZE = ("rescale", "imagenet", "backbone")
POOLS = ("avg", "flatten")


@dataclass(frozen=True)
class Recipe:
    """A training recipe. Field docs are what `tlbench recipes` shows."""

    name: str
    summary: str
    optimizer: str  # sgd | adamw
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (per step, to 0)
    warmup_epochs: float = 0.0
    batch_size: int = 32
    epochs: int = 1000
    image_size: int = 224
    interpolation: str = "nearest"  # resize when decoding (PIL), as Keras' load_img
    augment: str = "keras"  # keras | none
    normalize: str = "rescale"  # rescale: x/255 | imagenet: ImageNet mean/std | backbone: the weights' own
    pool: str = "avg"  # avg | flatten: how the feature map enters the head
    hidden: int = 512  # Dense(512) + ReLU
    dropout: float = 0.3
    head_l2: float = 1e-4  # Keras l2(1e-4) on the Dense(512) kernel: + head_l2 * sum(W**2) in the loss
    label_smoothing: float = 0.0
    freeze: str = "none"  # default freeze spec

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with the non-None overrides applied and checked."""
        known = {f.name for f in fields(self)}
        values = asdict(self)
        for key, value in overrides.items():
            if key not in known:
                raise UsageError(f"unknown recipe field {key!r}")
            if value is not None:
                values[key] = value
        out = Recipe(**values)
        out.validate()
        return out

    def validate(self) -> None:
        checks = (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("aug", self.augment, AUGMENTS),
            ("normalize", self.normalize, NORMALIZE),
            ("pool", self.pool, POOLS),
        )
        for option, value, allowed in checks:
            if value not in allowed:
                raise UsageError(f"--{option} {value!r} is not one of {', '.join(allowed)}")
        if self.lr <= 0:
            raise UsageError(f"--lr {self.lr} must be positive")
        if self.batch_size < 1 or self.epochs < 1:
            raise UsageError("--batch-size and --epochs must be at least 1")
        if not 16 <= self.image_size <= 1024:
            raise UsageError(f"--image-size {self.image_size} is out of range", "use 16 to 1024 pixels")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"dropout {self.dropout} must be in [0, 1)")


RECIPES: dict[str, Recipe] = {}


def register_recipe(factory: Callable[[], Recipe]) -> Callable[[], Recipe]:
    recipe = factory()
    recipe.validate()
    RECIPES[recipe.name] = recipe
    return factory


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UsageError(  # noqa: B904 - the KeyError adds nothing for the user
            f"unknown recipe {name!r}", f"use one of {', '.join(RECIPES)} (see `tlbench recipes`)"
        )


@register_recipe
def keras_vgg19() -> Recipe:
    return Recipe(
        name="keras-vgg19",
        summary=(
            "The reference Keras recipe: SGD lr 1e-4 momentum 0.9, batch 32, 1000 epochs, "
            "224 px nearest resize, Keras augmentation, "
            "input rescaled to [0, 1] (no mean/std, as the original), "
            "GAP -> Dense(512, relu, l2 1e-4) -> Dropout(0.3) -> Dense(classes)"
        ),
        optimizer="sgd",
        lr=1e-4,
        momentum=0.9,
        batch_size=32,
        epochs=1000,
        image_size=224,
        interpolation="nearest",
        augment="keras",
        normalize="rescale",
        pool="avg",
        freeze="11",
    )


@register_recipe
def timm_ft() -> Recipe:
    return Recipe(
        name="timm-ft",
        summary=(
            "A small modern fine-tune: AdamW lr 5e-4 wd 0.05, cosine to 0 with 1 warm-up epoch, "
            "label smoothing 0.1, batch 64, 30 epochs, bilinear resize, Keras augmentation, the "
            "backbone's own mean/std, same head (no L2; AdamW's decoupled weight decay instead)"
        ),
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.05,
        schedule="cosine",
        warmup_epochs=1.0,
        batch_size=64,
        epochs=30,
        image_size=224,
        interpolation="bilinear",
        augment="keras",
        normalize="backbone",
        pool="avg",
        head_l2=0.0,
        label_smoothing=0.1,
        freeze="none",
    )
