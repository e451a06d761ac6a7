"""What a reader of a mini-ImageNet layout hands back, and how its images are opened and decoded.

A `Source` is a data set on disk, read but not decoded: one `SourceItem` per image (its class wnid
and the source split it came from) and a way to stream the undecoded payloads (a file path,
encoded bytes, a pixel array, or `Refused` for a file that must not be opened). `open_image` opens
one payload; `decode_each` runs a caller's decoder over every payload on threads. The readers, one
module per layout family beside this one, share the helpers here (hidden entries, split names,
whole-number labels).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
EXPECTED_LAYOUTS = (
    "train/<wnid>/ + val/<wnid>/ (imagefolder), images/ + train.csv/val.csv/test.csv (ravi-csv), "
    "mini-imagenet-cache-*.pkl (pickle) or data/{train,validation,test}-*.parquet (parquet)"
)


@dataclass(frozen=True)
class Refused:
    """The payload of an item that must not be opened (a csv row naming a path outside the data folder)."""

    reason: str


Payload = Path | bytes | np.ndarray | Refused
T = TypeVar("T")


@dataclass(frozen=True)
class SourceItem:
    """One image of a source: a stable reference, its class and the split the source put it in."""

    ref: str
    wnid: str
    group: str  # train | val | test


@dataclass
class Source:
    """A data set on disk, read but not decoded."""

    format: str
    root: Path
    _items: list[SourceItem] | None  # None: listed on first use by `_lister`
    pooled: bool
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _payloads: Any = None  # callable yielding (index, payload) in item order
    _lister: Any = None  # callable returning the items, for sources that are costly to list

    @property
    def items(self) -> list[SourceItem]:
        """One entry per image. Pickle sources list theirs only when asked (a cache hit never asks)."""
        if self._items is None:
            self._items = self._lister()
        return self._items

    def fingerprint(self) -> str:
        """Hash of every file the source reads: relative path, size and mtime."""
        h = hashlib.sha256(self.format.encode())
        for path in sorted(self.files):
            try:
                st = path.stat()
            except OSError:
                h.update(f"{path}|missing".encode())
                continue
            rel = os.path.relpath(path, self.root)
            h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def payloads(self) -> Iterator[tuple[int, Payload]]:
        """Yield (item index, undecoded payload) for every item, in order."""
        yield from self._payloads()

    @property
    def classes(self) -> list[str]:
        return sorted({item.wnid for item in self.items})


def hidden(path: Path) -> bool:
    """`.ipynb_checkpoints/`, `.DS_Store`, `._x.jpg`: never a class or an image.

    (torchvision's ImageFolder lists hidden folders as classes: the `.ipynb_checkpoints` trap.)
    """
    return path.name.startswith(".")


def whole_number(value: Any) -> int | None:
    """`value` as an int when it is a whole number (7, 7.0, numpy integers), else None (0.7, "7", True)."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return None


def open_image(payload: Payload) -> Any:
    """Open a payload as a PIL image (not yet decoded in full).

    Raises:
        ValueError: A refused payload, or a path that is not a regular file (a device or a pipe
            would block the decoder, a folder cannot be an image).
        OSError: An unreadable file.
    """
    from PIL import Image

    if isinstance(payload, Refused):
        raise ValueError(payload.reason)
    if isinstance(payload, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(payload, dtype=np.uint8))
    if isinstance(payload, bytes):
        return Image.open(io.BytesIO(payload))
    if not stat.S_ISREG(os.stat(payload).st_mode):  # follows links: a link to /dev/stdin is refused too
        raise ValueError(f"{payload} is not a regular file")
    return Image.open(payload)


def decode_each(
    source: Source, decode: Callable[[Payload], T], workers: int | None = None
) -> Iterator[tuple[int, T | None, str | None]]:
    """Yield (index, `decode(payload)`, None) for every item in order, decoding on a thread pool.

    An item `decode` raises for gives (index, None, "TypeName: message") instead: PIL raises many
    types for a broken file. Payloads are read 256 at a time, so a large source is never all in memory.

    Args:
        source: The items to decode.
        decode: Turns one payload into a result; called from worker threads.
        workers: Threads (default: the CPU count, at most 8).
    """

    def work(job: tuple[int, Payload]) -> tuple[int, T | None, str | None]:
        index, payload = job
        try:
            return index, decode(payload), None
        except Exception as exc:  # PIL raises many types for a broken file
            return index, None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
        chunk: list[tuple[int, Payload]] = []
        for job in source.payloads():
            chunk.append(job)
            if len(chunk) >= 256:
                yield from pool.map(work, chunk)
                chunk = []
        yield from pool.map(work, chunk)
