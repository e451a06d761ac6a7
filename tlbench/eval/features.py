"""One feature extraction per (data set, backbone, weights, input, pool, precision), kept in the user cache.

A frozen backbone in eval mode, without augmentation, gives every image the same pooled feature
vector whatever protocol reads it, so the features of *every* image of the decoded data set are
computed once, in the packed order, and every split is an index into them: the linear probe, k-NN
and few-shot episodes of `tlbench eval`, and the head of `tlbench run --freeze all --aug none`
(`tlbench.train.features`), all read the same file.

The cache key (`feature_key`) holds what changes the numbers: the decoded data (its source
fingerprint, image size and interpolation), the backbone name, a digest of its weights (so a random
initialisation, a timm tag or a local file each get their own entry), the input normalisation, the
pooling and the precision of the forward pass. The entry is `<cache>/features/<fingerprint>/`:
`features.npy` (float32, images x dim) written first, then `meta.json`, which marks it complete;
both writes are atomic. `$TLBENCH_FEATURES` moves the cache; `--no-feature-cache` bypasses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tlbench import runtime
from tlbench._console import progress_bar
from tlbench._io import write_json, write_with
from tlbench._util import user_cache

FORMAT = "tlbench-features/1"


def features_root() -> Path:
    """`$TLBENCH_FEATURES`, else `<user cache>/tlbench/features`."""
    env = os.environ.get("TLBENCH_FEATURES")
    return Path(env).expanduser() if env else user_cache() / "features"


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of every parameter and buffer of `module` (names, shapes, dtypes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def feature_key(
    model: Any, data_info: dict[str, Any], mean: Any, std: Any, amp_dtype: torch.dtype | None
) -> dict[str, Any]:
    """Everything the features depend on, for the fingerprint and the record."""
    return {
        "format": FORMAT,
        "source_fingerprint": data_info.get("source_fingerprint"),
        "class_list_hash": data_info.get("class_list_hash"),
        "data_image_size": data_info.get("image_size"),
        "interpolation": data_info.get("interpolation"),
        "backbone": model.backbone_name,
        "weights_digest": weights_digest(model.backbone),
        "weights_source": model.weights_source,
        "image_size": model.image_size,
        "pool": model.pool,
        "mean": None if mean is None else [round(float(m), 6) for m in mean],
        "std": None if std is None else [round(float(s), 6) for s in std],
        "precision": runtime.precision_name(amp_dtype),
    }


def fingerprint(key: dict[str, Any]) -> str:
    """The cache entry's name: a hash of `feature_key`'s values."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class FeatureSet:
    """The pooled features of every packed image, in packed order, and how they were obtained.

    Attributes:
        features: (images, dim) float32 on the CPU.
        fingerprint: The cache entry's name.
        key: What the fingerprint hashes (`feature_key`).
        seconds: Extraction time (of the extraction that made the entry, when read from the cache).
        images_per_sec: Extraction throughput, the same way.
        reused: Read from the cache rather than computed now.
    """

    features: Tensor
    fingerprint: str
    key: dict[str, Any]
    seconds: float
    images_per_sec: float
    reused: bool

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def record(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "images": int(self.features.shape[0]),
            "seconds": round(self.seconds, 3),
            "images_per_sec": round(self.images_per_sec, 1),
            "reused": self.reused,
            "precision": self.key["precision"],
        }


EXTRACTIONS = [0]
"""How many extractions this process has run (the tests count them: one per backbone)."""


@torch.no_grad()
def extract(
    model: Any,
    images: np.ndarray,
    transform: Callable[[Tensor], Tensor],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_size: int,
    *,
    progress: bool = False,
    label: str = "",
) -> tuple[Tensor, float]:
    """The model's pooled features (float32, CPU) of `images` (N, H, W, 3 uint8) in order, in eval
    mode and batches, and the seconds it took (the device synchronised at the end)."""
    EXTRACTIONS[0] += 1
    was_training = model.training
    model.eval()
    n = len(images)
    out: Tensor | None = None
    start = time.perf_counter()
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"features {label} ({n:,} images)", total=n)
            for lo in range(0, n, batch_size):
                batch = torch.from_numpy(np.array(images[lo : lo + batch_size])).to(device)
                with runtime.autocast(device, amp_dtype):
                    feats = model.forward_features(transform(batch)).float()
                if out is None:
                    out = torch.empty((n, feats.shape[1]), dtype=torch.float32)
                out[lo : lo + len(feats)] = feats.to("cpu")
                bar.advance(task, len(feats))
        runtime.sync(device)
    finally:
        model.train(was_training)
    assert out is not None, "no images to extract"
    return out, time.perf_counter() - start


def load_or_extract(
    model: Any,
    images: np.ndarray,
    data_info: dict[str, Any],
    transform: Any,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_size: int,
    *,
    cache: bool = True,
    progress: bool = False,
) -> FeatureSet:
    """The features of every image in `images` (the packed array `data_info` describes): read from
    the cache when an entry with the same key exists, else extracted (and stored, with `cache`)."""
    key = feature_key(model, data_info, transform.mean, transform.std, amp_dtype)
    name = fingerprint(key)
    folder = features_root() / name
    if cache:
        found = _read(folder, name, key, len(images))
        if found is not None:
            return found
    feats, seconds = extract(
        model, images, transform, device, amp_dtype, batch_size, progress=progress, label=model.backbone_name
    )
    rate = len(images) / max(seconds, 1e-9)
    if cache:

        def save(path: Path) -> None:
            with path.open("wb") as fh:
                np.save(fh, feats.numpy())

        write_with(folder / "features.npy", save)
        write_json(folder / "meta.json", {"key": key, "seconds": seconds, "images_per_sec": rate})
    return FeatureSet(feats, name, key, seconds, rate, reused=False)


def _read(folder: Path, name: str, key: dict[str, Any], count: int) -> FeatureSet | None:
    """The cache entry, or None where it is missing, incomplete, damaged or of another key."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key:
            return None
        array = np.load(folder / "features.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if array.ndim != 2 or array.shape[0] != count or array.dtype != np.float32:
        return None
    feats = torch.from_numpy(np.array(array))
    return FeatureSet(feats, name, key, float(meta["seconds"]), float(meta["images_per_sec"]), reused=True)
