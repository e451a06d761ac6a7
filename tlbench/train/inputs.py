"""How packed uint8 images become model input for a recipe: normalization and the two transforms.

`tlbench run` and `tlbench bench --data` build their transforms here, so the benchmark times the
input pipeline a run executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from tlbench.config import Recipe
from tlbench.data.augment import BatchTransform, KerasAugment

Triple = tuple[float, float, float]


def normalization(mode: str, data_config: dict[str, Any]) -> tuple[Triple | None, Triple | None]:
    """(mean, std) subtracted after `x / 255`: none (`rescale`, the reference recipe), ImageNet's,
    or the backbone's pretrained config's (`backbone`)."""
    if mode == "rescale":
        return None, None
    if mode == "imagenet":
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)  # type: ignore[return-value]
    return tuple(data_config["mean"]), tuple(data_config["std"])


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


@dataclass
class Inputs:
    """What a run feeds its model: training and validation batches with their transforms.

    `val` is what the epoch loop validates on (cached features for a linear probe); `image_val`
    is always the images, for the final evaluation of the exported model. `select` is the selection
    split's batches (None without one), evaluated every epoch as `val` is, with `val_tf`.
    """

    train: Any
    val: Any
    image_val: Any
    train_tf: Any
    val_tf: Any
    image_val_tf: Any
    mean: Triple | None
    std: Triple | None
    cached: Any = None
    select: Any = None


def _identity(x: Any, generator: Any = None) -> Any:
    return x


def build_inputs(
    cfg: Any, data: Any, model: Any, device: Any, amp_dtype: Any, group: Any, channels_last: bool
) -> Inputs:
    """Loaders and transforms for `cfg` on `data`; a linear probe without augmentation (the whole
    backbone frozen, `--feature-cache`) trains on features computed once.

    The transforms return batches in the model's memory layout (`channels_last`, as
    `tlbench.speed` chose it). Under data-parallel training (`group.world > 1`) every rank takes its
    part of each global training batch, and a disjoint, contiguous, unpadded share of the
    validation split (and of the selection split).
    """
    from tlbench.data.loader import BatchLoader
    from tlbench.train.features import cache_features

    recipe = cfg.recipe
    tfs = transforms(recipe, model.data_config, channels_last)
    place, shard = cfg.data_on_device, (group.rank, group.world)
    # A last global batch whose smallest share would hold one image breaks BatchNorm in train mode
    # (one value per channel on small feature maps): drop it for that epoch (a different set of
    # images each epoch, shuffled). With one process: a last batch of exactly one image.
    rest = len(data.train) % recipe.batch_size
    drop_last = 0 < rest < 2 * group.world

    def loader(split: Any, shuffle: bool, **kw: Any) -> BatchLoader:
        return BatchLoader.from_split(
            split, recipe.batch_size, device, shuffle=shuffle, placement=place, **kw
        )

    per_rank = max(1, recipe.batch_size // group.world)

    def evaluation(split: Any) -> BatchLoader:  # this rank's share, in order, no augmentation
        share = split.indices[_share(len(split), group.rank, group.world)]
        return BatchLoader(split.packed.images, split.packed.labels, share, per_rank, device,
                           shuffle=False, placement=place)  # fmt: skip

    image_val = evaluation(data.val)
    image_select = evaluation(data.select) if data.select is not None else None
    inputs = Inputs(None, image_val, image_val, tfs.train, tfs.val, tfs.val, tfs.mean, tfs.std)
    inputs.select = image_select
    frozen = not any(p.requires_grad for p in model.backbone.parameters())
    if cfg.feature_cache and frozen and not tfs.augmented:
        inputs.cached = cache_features(
            model, loader(data.train, False), image_val, tfs.val, device, amp_dtype, recipe.batch_size,
            cfg.seed, shard=shard, select=image_select, data=data if group.world == 1 else None,
        )  # fmt: skip
        inputs.train, inputs.val = inputs.cached.train, inputs.cached.val
        inputs.select = inputs.cached.select
        inputs.train_tf = inputs.val_tf = _identity
    else:
        inputs.train = loader(data.train, True, seed=cfg.seed, drop_last=drop_last, shard=shard)
    return inputs


def _share(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous part of `n` items: every item in exactly one part, none padded."""
    lo, hi = n * rank // world, n * (rank + 1) // world
    return slice(lo, hi)
