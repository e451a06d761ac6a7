"""The linear-probe feature cache: a frozen backbone without augmentation sees the same images every
epoch, so its features are computed once and the head trains on them alone.

Used only when the whole backbone is frozen and augmentation is off (`--freeze all --aug none`,
with `--feature-cache`, the default); it gives the same numbers as the image path, faster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tlbench import runtime
from tlbench.data.loader import epoch_permutation, shard


class FeatureBatches:
    """Batches of cached features, in the same seeded order the image loader would use."""

    placement = "cached features"

    def __init__(
        self,
        features: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.features, self.labels = features, labels
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.rank, self.world = shard
        self.weight = 1.0

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
        order = order.to(self.features.device)
        for b in range(len(self)):
            pos, self.weight = shard(
                order[b * self.batch_size : (b + 1) * self.batch_size], self.rank, self.world
            )
            yield self.features.index_select(0, pos), self.labels.index_select(0, pos)


@torch.no_grad()
def extract_features(
    model: Any,
    batches: Any,
    transform: Callable[[Tensor], Tensor],
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor]:
    """The frozen backbone's pooled features (float32) for a whole split, in the batches' order."""
    model.eval()
    feats, labels = [], []
    for x, y in batches:
        with runtime.autocast(device, amp_dtype):
            feats.append(model.forward_features(transform(x)).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


@dataclass(frozen=True)
class CachedFeatures:
    """The probe's inputs: feature batches for training, validation and the selection split (None
    without one), and what caching cost."""

    train: FeatureBatches
    val: FeatureBatches
    seconds: float
    dim: int
    select: FeatureBatches | None = None

    def record(self) -> dict[str, Any]:
        """The summary's `feature_cache` entry."""
        return {"used": True, "seconds": round(self.seconds, 3), "dim": self.dim}


def cache_features(
    model: Any,
    ordered_train: Any,
    val: Any,
    transform: Callable[[Tensor], Tensor],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_size: int,
    seed: int,
    shard: tuple[int, int] = (0, 1),
    select: Any = None,
) -> CachedFeatures:
    """Compute the train split's features (unshuffled loader order), the validation batches' and the
    selection batches' (if any) once; under data-parallel training each rank then trains on its
    `shard` of every global batch."""
    start = time.perf_counter()
    train_x, train_y = extract_features(model, ordered_train, transform, device, amp_dtype)
    val_x, val_y = extract_features(model, val, transform, device, amp_dtype)
    select_batches = None
    if select is not None:  # like `val`: already this rank's share
        select_x, select_y = extract_features(model, select, transform, device, amp_dtype)
        select_batches = FeatureBatches(select_x, select_y, batch_size, shuffle=False)
    return CachedFeatures(
        train=FeatureBatches(train_x, train_y, batch_size, shuffle=True, seed=seed, shard=shard),
        val=FeatureBatches(val_x, val_y, batch_size, shuffle=False),  # `val` is already this rank's share
        seconds=time.perf_counter() - start,
        dim=int(train_x.shape[1]),
        select=select_batches,
    )
