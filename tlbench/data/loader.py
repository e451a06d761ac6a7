"""Batches straight from the packed uint8 array: no workers, no per-image Python.

A batch is an index slice of a seeded per-epoch permutation. Where the data lives:

- `cuda`: the split is uploaded once as one uint8 tensor (60,000 x 224 x 224 x 3 = 9 GB fits an
  H100), and a batch is an `index_select` on the GPU;
- `cpu` with a CUDA device: a background thread gathers each batch into pinned host memory and
  it is copied with `non_blocking=True`, overlapping the previous step;
- `cpu` with a CPU device: a gather from the memory-mapped array.

`auto` picks `cuda` when the split takes less than half of the free GPU memory.
The permutation for epoch e is drawn from a generator seeded with `derive_seed(seed, "order", e)`,
so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from tlbench._util import derive_seed
from tlbench.errors import DeviceError, UsageError

PLACEMENTS = ("auto", "cpu", "cuda")


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of a split's samples in one epoch: deterministic in (seed, epoch)."""
    g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(n, generator=g)


def shard(pos: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """Rank `rank`'s part of one global batch, and the weight of its mean loss.

    The global batch is cut into `world` contiguous, nearly equal parts (the first ones one larger
    when it does not divide). Weighting each rank's mean loss by `world * len(part) / len(batch)`
    makes the average of the ranks' gradients (what DDP computes) the gradient of the global
    batch's mean loss: exactly what one process with the whole batch computes.
    """
    if world == 1:
        return pos, 1.0
    part = torch.tensor_split(pos, world)[rank]
    return part, world * len(part) / len(pos)


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # A read-only memmap: we never write through it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(images)


class BatchLoader:
    """Yield (uint8 NHWC images, int64 labels) batches of one split on `device`.

    Args:
        images: the packed array (N, H, W, 3) uint8, usually memory-mapped.
        labels: int labels for every row of `images`.
        indices: the rows that make up this split.
        batch_size: samples per batch.
        device: where batches are delivered.
        shuffle: a new seeded permutation every epoch (else the split's order).
        seed: seeds the permutations.
        drop_last: drop a last, smaller batch.
        placement: auto | cpu | cuda, where the split's images are held.
        shard: (rank, world): under data-parallel training each rank takes its part of every global
            batch of `batch_size` (see `shard`); `weight` is then the current batch's loss weight.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        placement: str = "auto",
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size {batch_size} must be at least 1")
        if placement not in PLACEMENTS:
            raise UsageError(f"--data-on-device {placement!r} is not one of {', '.join(PLACEMENTS)}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world = shard
        self.weight = 1.0
        self.epoch = 0
        self.indices = np.asarray(indices, dtype=np.int64)
        self.n = len(self.indices)
        self.image_shape = tuple(images.shape[1:])
        self.placement = self._choose(placement, images)
        labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64)[self.indices])
        if self.placement == "cuda":
            self.images = self._upload(images)
            self.labels = labels_t.to(self.device)
        else:
            self.source = _as_tensor(images)
            self.rows = torch.from_numpy(self.indices)
            self.labels = labels_t

    @classmethod
    def from_split(
        cls, split: Any, batch_size: int, device: torch.device | str = "cpu", **kwargs: Any
    ) -> BatchLoader:
        """A loader over one `tlbench.data.dataset.Split` (its packed images, labels and indices)."""
        return cls(split.packed.images, split.packed.labels, split.indices, batch_size, device, **kwargs)

    def _choose(self, placement: str, images: np.ndarray) -> str:
        if placement == "cuda" and self.device.type != "cuda":
            raise DeviceError(
                "--data-on-device cuda needs a CUDA device", "use --device cuda, or --data-on-device auto|cpu"
            )
        if placement != "auto":
            return placement
        if self.device.type != "cuda":
            return "cpu"
        need = self.n * int(np.prod(images.shape[1:]))
        free, _total = torch.cuda.mem_get_info(self.device)
        return "cuda" if need < 0.5 * free else "cpu"

    def _upload(self, images: np.ndarray) -> torch.Tensor:
        out = torch.empty((self.n, *self.image_shape), dtype=torch.uint8, device=self.device)
        chunk = 2048
        for lo in range(0, self.n, chunk):
            rows = self.indices[lo : lo + chunk]
            out[lo : lo + len(rows)].copy_(torch.from_numpy(np.ascontiguousarray(images[rows])))
        return out

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            return epoch_permutation(self.n, self.seed, self.epoch)
        return torch.arange(self.n)

    def _slices(self) -> Iterator[tuple[torch.Tensor, float]]:
        """This rank's positions of each batch, with their loss weight."""
        order = self._order()
        for b in range(len(self)):
            yield shard(order[b * self.batch_size : (b + 1) * self.batch_size], self.rank, self.world)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.placement == "cuda":
            for pos, weight in self._slices():
                self.weight, pos = weight, pos.to(self.device)
                yield self.images.index_select(0, pos), self.labels.index_select(0, pos)
        elif self.device.type == "cpu":
            for pos, weight in self._slices():
                self.weight = weight
                yield self.source.index_select(0, self.rows[pos]), self.labels[pos]
        else:
            yield from self._pinned()

    def _pinned(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Gather on a background thread into pinned buffers; copy to the GPU without blocking."""
        slices = list(self._slices())
        weights = [w for _, w in slices]
        ready: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def gather() -> None:
            try:
                for pos, _weight in slices:
                    if stop.is_set():
                        return
                    x = torch.empty((len(pos), *self.image_shape), dtype=torch.uint8).pin_memory()
                    torch.index_select(self.source, 0, self.rows[pos], out=x)
                    ready.put((x, self.labels[pos].pin_memory()))
            except BaseException as exc:  # hand the error to the consumer
                ready.put(exc)
            ready.put(None)

        thread = threading.Thread(target=gather, daemon=True)
        thread.start()
        try:
            for weight in weights:
                self.weight = weight
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                x, y = item
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
