"""Data pipeline speed: the batched augmentation and the packed loader against the usual per-image paths.

(a) augmentation at 224 px: `BatchTransform` (one grid_sample for the batch) against a per-image
    torchvision/PIL pipeline doing the same transforms (RandomAffine + flip + ToTensor). Target >= 10x.
(b) loading: the packed uint8 loader (plus the uint8 -> float conversion) against a torchvision
    `ImageFolder` DataLoader that decodes and resizes JPEGs with as many workers as cores. Target >= 20x.
Both start from the same images; throughput is images/s over whole batches or epochs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.conftest import record

BATCH = 64


@pytest.fixture(scope="module")
def images_uint8(bench_size: int) -> np.ndarray:
    from tlbench.data.render import render_class_images

    return np.concatenate([render_class_images(k, BATCH // 8, bench_size, 0) for k in range(8)])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def test_augment_batched(benchmark, images_uint8: np.ndarray, device: str) -> None:
    from tlbench.data.augment import BatchTransform, KerasAugment

    batch = torch.from_numpy(images_uint8).to(device)
    transform = BatchTransform(KerasAugment(), seed=0)

    def step() -> None:
        transform(batch)
        _sync(device)

    for _ in range(3):
        step()
    benchmark.pedantic(step, rounds=10, iterations=1)
    ips = BATCH / benchmark.stats.stats.median
    benchmark.extra_info["images_per_sec"] = ips
    record("augment", f"tlbench BatchTransform ({device})", ips, notes="one grid_sample per batch")


def test_augment_per_image_torchvision(benchmark, images_uint8: np.ndarray) -> None:
    from PIL import Image
    from torchvision import transforms as T

    # Keras' ranges in torchvision's terms: rotation 40 deg, shift 0.2, shear 0.2 deg, zoom 0.8-1.2
    # (isotropic: torchvision has no independent x/y zoom), flip, then ToTensor's rescale to [0, 1].
    pipeline = T.Compose(
        [
            T.RandomAffine(
                degrees=40,
                translate=(0.2, 0.2),
                scale=(0.8, 1.2),
                shear=0.2,
                interpolation=T.InterpolationMode.BILINEAR,
            ),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
        ]
    )
    pils = [Image.fromarray(img) for img in images_uint8]

    def step() -> None:
        torch.stack([pipeline(img) for img in pils])

    step()
    benchmark.pedantic(step, rounds=5, iterations=1)
    ips = BATCH / benchmark.stats.stats.median
    benchmark.extra_info["images_per_sec"] = ips
    record(
        "augment",
        "per-image torchvision/PIL (cpu)",
        ips,
        baseline=True,
        notes="RandomAffine + flip + ToTensor",
    )


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory: pytest.TempPathFactory, bench_size: int) -> Path:
    from tlbench.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("bench") / "imagefolder"
    # 16 classes x 48 images: 640 train JPEGs at the benchmark size
    return write_synthetic(
        root, "imagefolder", classes=16, per_class=48, size=bench_size, seed=0, progress=False
    )


@pytest.fixture(scope="module")
def packed_split(jpeg_folder: Path, bench_size: int, tmp_path_factory: pytest.TempPathFactory):
    import warnings

    from tlbench.data.dataset import load_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache = tmp_path_factory.mktemp("cache")
        return load_data(jpeg_folder, bench_size, "nearest", cache_root=cache, progress=False).train


@pytest.mark.parametrize("to_float", [False, True], ids=["uint8", "float"])
def test_loader_packed(benchmark, packed_split, device: str, to_float: bool) -> None:
    from tlbench.data.augment import BatchTransform
    from tlbench.data.loader import BatchLoader

    split = packed_split
    loader = BatchLoader(split.packed.images, split.packed.labels, split.indices, 32, device=device, seed=0)
    convert = BatchTransform(None)
    epoch = [0]

    def one_epoch() -> None:
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        for x, _y in loader:
            if to_float:
                convert(x)
        _sync(device)

    one_epoch()
    benchmark.pedantic(one_epoch, rounds=5, iterations=1)
    ips = len(split) / benchmark.stats.stats.median
    benchmark.extra_info["images_per_sec"] = ips
    what = "uint8 batches + float conversion (what a CPU model consumes)" if to_float else "uint8 batches"
    record(
        "loader",
        f"tlbench packed BatchLoader ({device}, {loader.placement}, {'float' if to_float else 'uint8'})",
        ips,
        notes=what,
    )


def test_loader_imagefolder_jpeg(benchmark, jpeg_folder: Path, bench_size: int) -> None:
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    dataset = datasets.ImageFolder(
        str(jpeg_folder / "train"),
        transform=T.Compose([T.Resize((bench_size, bench_size), T.InterpolationMode.NEAREST), T.ToTensor()]),
    )
    workers = os.cpu_count() or 2
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers, persistent_workers=True)

    def one_epoch() -> None:
        for _x, _y in loader:
            pass

    one_epoch()  # start the workers outside the timing
    benchmark.pedantic(one_epoch, rounds=3, iterations=1)
    ips = len(dataset) / benchmark.stats.stats.median
    benchmark.extra_info["images_per_sec"] = ips
    record(
        "loader",
        f"torchvision ImageFolder + DataLoader ({workers} workers)",
        ips,
        baseline=True,
        notes="JPEG decode + resize + ToTensor",
    )
