"""How packed uint8 images become model input for a recipe: normalization and the two transforms.

`tlbench run` and `tlbench bench --data` build their transforms here, so the benchmark times the
input pipeline a run executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from tlbench.data.augment import BatchTransform, KerasAugment
from tlbench.train.recipes import Recipe

Triple = tuple[float, float, float]


def normalization(mode: str, data_config: dict[str, Any]) -> tuple[Triple | None, Triple | None]:
    """(mean, std) subtracted after `x / 255`: none (`rescale`, the reference recipe), ImageNet's,
    or the backbone's pretrained config's (`backbone`)."""
    if mode == "rescale":
        return None, None
    if mode == "imagenet":
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)  # type: ignore[return-value]
    return tuple(data_config["mean"]), tuple(data_config["std"])  # type: ignore[return-value]


@dataclass(frozen=True)
class Transforms:
    """The training transform (Keras augmentation when the recipe has it) and the validation one."""

    train: BatchTransform
    val: BatchTransform
    mean: Triple | None
    std: Triple | None

    @property
    def augmented(self) -> bool:
        return self.train.augment is not None


def transforms(recipe: Recipe, data_config: dict[str, Any], channels_last: bool) -> Transforms:
    """The recipe's transforms for a model whose pretrained config is `data_config`."""
    mean, std = normalization(recipe.normalize, data_config)
    augment = KerasAugment() if recipe.augment == "keras" else None
    return Transforms(
        train=BatchTransform(augment, mean, std, channels_last=channels_last),
        val=BatchTransform(None, mean, std, channels_last=channels_last),
        mean=mean,
        std=std,
    )
