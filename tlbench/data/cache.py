"""Decode once: a source becomes one packed uint8 array on disk, memory-mapped on every later use.

A cache entry is a folder `<cache root>/<key>/` holding

- `images.npy`: uint8 (N, H, W, 3), every image resized to the requested size,
- `labels.npy`: int64 (N,), index into the sorted class list,
- `groups.npy`: int8 (N,), the source split (0 train, 1 val, 2 test),
- `meta.json`: classes, source format and fingerprint, size, interpolation, corrupt images.

The key hashes the source's content (every file's path, size and mtime), the image size and the
interpolation, so a changed source or another size gets a new entry. The folder is built under a
temporary name and renamed into place, so a half-built cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlbench._console import progress_bar
from tlbench._io import atomic_dir, remove_dead_temp_dirs, write_json
from tlbench.data.formats import Payload, Source, decode_each, open_image
from tlbench.errors import DataError

CACHE_VERSION = 2  # 2: the key no longer lists the items (pickle sources stay unread on a hit)
GROUPS = ("train", "val", "test")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def default_cache_root() -> Path:
    """`$TLBENCH_CACHE`, else `<user cache>/tlbench/packed`."""
    env = os.environ.get("TLBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tlbench" / "packed"


@dataclass
class Packed:
    """A decoded source: memory-mapped images plus labels, source splits and metadata."""

    path: Path
    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def _resample(interpolation: str) -> int:
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise DataError(f"unknown interpolation {interpolation!r}", f"use one of {', '.join(INTERPOLATIONS)}")
    return int(getattr(Image.Resampling, interpolation.upper()))


def decode(payload: Payload, size: int | None, resample: int) -> np.ndarray:
    """Decode one image to RGB uint8 (H, W, 3), resized to size x size (Keras' `load_img` order)."""
    img = open_image(payload)
    img.load()
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), resample)
    return np.asarray(img, dtype=np.uint8)


def cache_key(source: Source, size: int, interpolation: str) -> str:
    payload = json.dumps(
        {
            "v": CACHE_VERSION,
            "format": source.format,
            "root": str(source.root),
            "fingerprint": source.fingerprint(),
            "size": size,
            "interpolation": interpolation,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def corrupt_error(corrupt: list[dict[str, str]], root: Path) -> DataError:
    shown = ", ".join(c["ref"] for c in corrupt[:5]) + (
        f" and {len(corrupt) - 5} more" if len(corrupt) > 5 else ""
    )
    return DataError(
        f"{len(corrupt)} corrupt or unreadable image(s) in {root}: {shown}",
        f"run `tlbench data check {root}` for the full list, fix or remove them, or pass --skip-corrupt",
    )


def build_or_load(
    source: Source,
    size: int,
    interpolation: str = "nearest",
    *,
    skip_corrupt: bool = False,
    cache_root: Path | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Packed:
    """Return the packed form of `source` at `size`, decoding it on first use."""
    resample = _resample(interpolation)
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    key = cache_key(source, size, interpolation)
    final = cache_root / key
    if not (final / "meta.json").is_file():
        with _sigterm_as_interrupt():
            _build(source, size, interpolation, resample, final, progress, workers)
    packed = load_packed(final)
    corrupt = packed.meta.get("corrupt", [])
    if corrupt and not skip_corrupt:
        raise corrupt_error(corrupt, source.root)
    return packed


def load_packed(folder: Path) -> Packed:
    meta = json.loads((folder / "meta.json").read_text())
    return Packed(
        path=folder,
        images=np.load(folder / "images.npy", mmap_mode="r"),
        labels=np.load(folder / "labels.npy"),
        groups=np.load(folder / "groups.npy"),
        meta=meta,
    )


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """During a build, SIGTERM unwinds like Ctrl-C, so the half-built folder is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _build(
    source: Source,
    size: int,
    interpolation: str,
    resample: int,
    final: Path,
    progress: bool,
    workers: int | None,
) -> None:
    classes = source.classes
    class_index = {wnid: i for i, wnid in enumerate(classes)}
    n = len(source.items)
    with atomic_dir(
        final, complete="meta.json", remedy="set TLBENCH_CACHE to a writable folder", replace_incomplete=True
    ) as tmp:
        remove_dead_temp_dirs(final.parent)
        start = time.perf_counter()
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        ok = np.zeros(n, dtype=bool)
        corrupt: list[dict[str, str]] = []
        with progress_bar(progress) as bar:
            task = bar.add_task(f"decoding {source.format} at {size}px ({interpolation})", total=n)
            for index, pixels, error in decode_each(
                source, lambda payload: decode(payload, size, resample), workers
            ):
                if pixels is None:
                    corrupt.append({"ref": source.items[index].ref, "error": error or "unreadable"})
                else:
                    images[index] = pixels
                    ok[index] = True
                bar.advance(task)
        labels = np.array([class_index[item.wnid] for item in source.items], dtype=np.int64)
        groups = np.array([GROUPS.index(item.group) for item in source.items], dtype=np.int8)
        if corrupt:
            # Compact the good rows into a fresh array so the cache holds only decodable images.
            keep = np.flatnonzero(ok)
            compact = np.lib.format.open_memmap(
                tmp / "images.compact.npy", mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3)
            )
            for lo in range(0, len(keep), 1024):
                compact[lo : lo + 1024] = images[keep[lo : lo + 1024]]
            compact.flush()
            del compact, images
            os.replace(tmp / "images.compact.npy", tmp / "images.npy")
            labels, groups = labels[keep], groups[keep]
        else:
            images.flush()
            del images
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "groups.npy", groups)
        write_json(
            tmp / "meta.json",
            {
                "cache_version": CACHE_VERSION,
                "format": source.format,
                "root": str(source.root),
                "fingerprint": source.fingerprint(),
                "size": size,
                "interpolation": interpolation,
                "classes": classes,
                "count": len(labels),
                "corrupt": corrupt,
                "notes": source.notes,
                "decode_seconds": round(time.perf_counter() - start, 3),
            },
        )
