"""The packed loader: every sample once per epoch, seeded and resumable, labels aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tlbench.data.dataset import load_data
from tlbench.data.loader import BatchLoader, epoch_permutation
from tlbench.errors import DeviceError, UsageError


def _toy(n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    # image i is filled with the value i, so a batch tells which rows it holds
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()
    return images, np.arange(n) % 7


def _rows(loader: BatchLoader) -> list[int]:
    out = []
    for x, y in loader:
        rows = x[:, 0, 0, 0].tolist()
        assert (torch.tensor(rows) % 7 == y).all(), "labels out of step with images"
        out += rows
    return out


def test_every_sample_once_per_epoch() -> None:
    images, labels = _toy()
    indices = np.arange(3, 50, 2)  # a split: odd rows from 3
    loader = BatchLoader(images, labels, indices, batch_size=8, seed=0)
    rows = _rows(loader)
    assert sorted(rows) == indices.tolist()
    assert len(loader) == 3


def test_epochs_differ_and_replay_exactly() -> None:
    images, labels = _toy()
    loader = BatchLoader(images, labels, np.arange(50), batch_size=10, seed=3)
    loader.set_epoch(0)
    e0 = _rows(loader)
    loader.set_epoch(1)
    e1 = _rows(loader)
    assert e0 != e1
    fresh = BatchLoader(images, labels, np.arange(50), batch_size=10, seed=3)
    fresh.set_epoch(1)  # a resumed run starting at epoch 1
    assert _rows(fresh) == e1
    other = BatchLoader(images, labels, np.arange(50), batch_size=10, seed=4)
    assert _rows(other) != e0


def test_no_shuffle_and_drop_last() -> None:
    images, labels = _toy(25)
    loader = BatchLoader(images, labels, np.arange(25), batch_size=10, shuffle=False, drop_last=True)
    assert len(loader) == 2
    assert _rows(loader) == list(range(20))


def test_batches_are_uint8_nhwc() -> None:
    images, labels = _toy()
    x, y = next(iter(BatchLoader(images, labels, np.arange(50), batch_size=4)))
    assert x.dtype == torch.uint8 and x.shape == (4, 4, 4, 3) and y.dtype == torch.int64


def test_permutation_is_a_permutation() -> None:
    p = epoch_permutation(1000, 1, 2)
    assert sorted(p.tolist()) == list(range(1000))
    assert torch.equal(p, epoch_permutation(1000, 1, 2))


def test_bad_options() -> None:
    images, labels = _toy()
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        BatchLoader(images, labels, np.arange(50), 4, placement="cuda")
    with pytest.raises(UsageError, match="not one of"):
        BatchLoader(images, labels, np.arange(50), 4, placement="gpu")
    with pytest.raises(UsageError, match="at least 1"):
        BatchLoader(images, labels, np.arange(50), 0)


def test_from_a_real_packed_split(synth_sets: dict[str, Path]) -> None:
    bundle = load_data(synth_sets["parquet"], 24, progress=False)
    loader = BatchLoader(bundle.train.packed.images, bundle.train.packed.labels, bundle.train.indices, 16)
    seen_x, seen_y = [], []
    for x, y in loader:
        seen_x.append(x)
        seen_y.append(y)
    x, y = torch.cat(seen_x), torch.cat(seen_y)
    got = sorted((bytes(img.numpy()), int(label)) for img, label in zip(x, y, strict=True))
    stored = bundle.train.images
    want = sorted((bytes(img), int(label)) for img, label in zip(stored, bundle.train.labels, strict=True))
    assert got == want  # the same images, each with its own label


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("placement", ["cuda", "cpu"])
def test_cuda_placements_match_cpu(placement: str) -> None:
    images, labels = _toy()
    cpu = [(x.clone(), y.clone()) for x, y in BatchLoader(images, labels, np.arange(50), 8, seed=1)]
    gpu = list(BatchLoader(images, labels, np.arange(50), 8, device="cuda", seed=1, placement=placement))
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())
