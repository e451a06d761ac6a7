"""The linear-probe feature cache: a frozen backbone without augmentation sees the same images every
epoch, so its features are computed once and the head trains on them alone.

Used only when the whole backbone is frozen and augmentation is off (`--freeze all --aug none`,
with `--feature-cache`, the default); it gives the same numbers as the image path, faster. With one
process the features come from the one feature cache that `tlbench eval` also uses
(`tlbench.eval.features`: every image of the data set once, kept in the user cache); under
data-parallel training each rank computes its own share in memory, as before.
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
    stored: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The summary's `feature_cache` entry (with the shared cache's fingerprint and whether it
        was reused, where it was used)."""
        shared = {k: self.stored[k] for k in ("fingerprint", "reused")} if self.stored else {}
        return {"used": True, "seconds": round(self.seconds, 3), "dim": self.dim, **shared}


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
    data: Any = None,
) -> CachedFeatures:
    """Compute the train split's features (unshuffled loader order), the validation batches' and the
    selection batches' (if any) once; under data-parallel training each rank then trains on its
    `shard` of every global batch.

    With `data` (the `DataBundle`; one process only), the features come from the shared feature
    cache (`tlbench.eval.features.load_or_extract`), indexed by each split's images.
    """
    start = time.perf_counter()
    if data is not None:
        return _from_store(model, data, transform, device, amp_dtype, batch_size, seed, start)
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


def _from_store(
    model: Any,
    data: Any,
    transform: Any,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_size: int,
    seed: int,
    start: float,
) -> CachedFeatures:
    """`cache_features` through the shared cache: every packed image's features, split by index."""
    from tlbench.eval.features import load_or_extract

    packed = data.train.packed
    found = load_or_extract(model, packed.images, data.info, transform, device, amp_dtype, batch_size)
    feats = found.features.to(device)

    def part(split: Any, **kw: Any) -> FeatureBatches:
        idx = torch.from_numpy(split.indices.astype("int64")).to(device)
        labels = torch.from_numpy(split.labels.astype("int64")).to(device)
        return FeatureBatches(feats.index_select(0, idx), labels, batch_size, **kw)

    select = part(data.select, shuffle=False) if data.select is not None else None
    return CachedFeatures(
        train=part(data.train, shuffle=True, seed=seed),
        val=part(data.val, shuffle=False),
        seconds=time.perf_counter() - start,
        dim=found.dim,
        select=select,
        stored=found.record(),
    )
