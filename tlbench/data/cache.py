"""Decode once: a source becomes one packed uint8 array on disk, memory-mapped on every later use.

A cache entry is a folder `<cache root>/<key>/` holding

- `images.npy`: uint8 (N, H, W, 3), every image resized to the requested size,
- `labels.npy`: int64 (N,), index into the sorted class list,
- `groups.npy`: int8 (N,), the source split (0 train, 1 val, 2 test),
- `meta.json`: classes, source format and fingerprint, size, interpolation, corrupt images.

The key hashes the source's content (every file's path, size and mtime), the image size and the
interpolation, so a changed source or another size gets a new entry. The folder is built under a
temporary name and renamed into place, so a half-built cache is never read.

The entry's size is known before decoding (N x H x W x 3 bytes): the free space is checked first and
`images.npy` is allocated in full before it is memory-mapped, so a full disk is an OutputError
naming the folder and the bytes needed, never a SIGBUS. Opening an entry checks its files against
`meta.json` (shapes, sizes, label ranges); a damaged entry is rebuilt, with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlbench._console import progress_bar
from tlbench._io import TEMP_DIR_PREFIX, atomic_dir, remove_dead_temp_dirs
from tlbench._util import first_line, user_cache
from tlbench.data.formats import Payload, Source, decode_each, open_image
from tlbench.errors import DataError, OutputError

CACHE_VERSION = 2  # 2: the key no longer lists the items (pickle sources stay unread on a hit)
GROUPS = ("train", "val", "test")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
HIGH_BIT_DEPTH = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # PIL modes of 16-bit grayscale images


class DamagedCacheWarning(UserWarning):
    """A cache entry did not match its metadata (truncated or garbled files); it is rebuilt."""


class DamagedEntry(Exception):
    """A cache entry whose files do not match its `meta.json`; the message says how."""


def default_cache_root() -> Path:
    """`$TLBENCH_CACHE`, else `<user cache>/tlbench/packed`."""
    env = os.environ.get("TLBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    return user_cache() / "packed"


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
    img = to_8_bit(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), resample)
    return np.asarray(img, dtype=np.uint8)


def to_8_bit(img: Any) -> Any:
    """A 16-bit grayscale image (PIL mode `I;16` or `I`) scaled to 8 bits; any other image as it is.

    0..65535 maps to 0..255 by round(v / 257), so a 16-bit copy of an 8-bit image (v = 257 x) gives
    x back. PIL's own `convert` clips at 255, which turns a 16-bit photo almost all white.

    Raises:
        ValueError: A 32-bit float image, whose range is unknown.
    """
    from PIL import Image

    if img.mode == "F":
        raise ValueError("32-bit float image: convert it to 8 bits per channel")
    if img.mode not in HIGH_BIT_DEPTH:
        return img
    wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
    return Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")


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
    packed = None
    if (final / "meta.json").is_file():
        try:
            packed = load_packed(final)
        except DamagedEntry as exc:
            warnings.warn(
                f"the decode cache entry {final} is damaged ({exc}): rebuilding it",
                DamagedCacheWarning,
                stacklevel=2,
            )
            _discard(final)
    if packed is None:
        with _sigterm_as_interrupt():
            _build(source, size, interpolation, resample, final, progress, workers)
        try:
            packed = load_packed(final)
        except DamagedEntry as exc:
            raise OutputError(
                f"the decode cache entry {final} is damaged right after it was built ({exc})",
                "check the disk, or set TLBENCH_CACHE to a folder on another one",
            ) from exc
    corrupt = packed.meta.get("corrupt", [])
    if corrupt and not skip_corrupt:
        raise corrupt_error(corrupt, source.root)
    return packed


def load_packed(folder: Path) -> Packed:
    """Open a cache entry, checking every file against `meta.json`.

    Raises:
        DamagedEntry: A file is missing, truncated or garbled, or disagrees with the metadata.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise DamagedEntry(f"meta.json unreadable: {first_line(exc)}") from exc
    if not isinstance(meta, dict):
        raise DamagedEntry("meta.json holds no metadata")
    count, size, classes = meta.get("count"), meta.get("size"), meta.get("classes")
    if not (
        isinstance(count, int)
        and count >= 0
        and isinstance(size, int)
        and size > 0
        and isinstance(classes, list)
        and all(isinstance(c, str) for c in classes)
        and isinstance(meta.get("fingerprint"), str)
    ):
        raise DamagedEntry("meta.json lacks a valid count, size, class list or fingerprint")
    images = _load_array(folder / "images.npy", np.uint8, (count, size, size, 3), mmap=True)
    labels = _load_array(folder / "labels.npy", np.int64, (count,))
    groups = _load_array(folder / "groups.npy", np.int8, (count,))
    if count and not (labels.min() >= 0 and labels.max() < len(classes)):
        raise DamagedEntry(f"labels.npy holds labels outside the {len(classes)} classes")
    if count and not (groups.min() >= 0 and groups.max() < len(GROUPS)):
        raise DamagedEntry("groups.npy holds unknown source splits")
    return Packed(path=folder, images=images, labels=labels, groups=groups, meta=meta)


def _load_array(path: Path, dtype: Any, shape: tuple[int, ...], *, mmap: bool = False) -> np.ndarray:
    """`np.load` of one cache file that must hold exactly `shape` x `dtype`, or DamagedEntry."""
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            found_shape, fortran, found_dtype = read_header(fh)
            found = path.stat().st_size - fh.tell()
        if found_shape != shape or fortran or found_dtype != np.dtype(dtype) or found != expected:
            raise DamagedEntry(
                f"{path.name} holds {found_shape} {found_dtype} in {found:,} bytes, "
                f"the metadata says {shape} {np.dtype(dtype)} in {expected:,}"
            )
        if mmap and expected:
            return np.load(path, mmap_mode="r")
        return np.load(path)
    except DamagedEntry:
        raise
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file (never let it read as Ctrl-C)
        raise DamagedEntry(f"{path.name} unreadable: {first_line(exc)}") from exc


def _discard(folder: Path) -> None:
    """Move a damaged entry aside in one rename (readers never see it half-deleted), then delete it."""
    aside = folder.parent / f"{TEMP_DIR_PREFIX}{folder.name}.damaged-{os.getpid()}"
    try:
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(folder, aside)
    except OSError as exc:
        if folder.exists():  # else gone already: another process is rebuilding it too
            raise OutputError(
                f"cannot remove the damaged decode cache entry {folder} ({exc.strerror or exc})",
                "delete it by hand, or set TLBENCH_CACHE to a writable folder",
            ) from exc
        return
    shutil.rmtree(aside, ignore_errors=True)


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
    n = len(source.items)
    needed = entry_bytes(n, size)
    try:
        with atomic_dir(
            final,
            complete="meta.json",
            remedy="set TLBENCH_CACHE to a writable folder",
            replace_incomplete=True,
        ) as tmp:
            remove_dead_temp_dirs(final.parent)
            free = _free_bytes(final.parent)
            if free is not None and free < needed:
                raise no_room_error(final.parent, needed)
            _fill(source, size, interpolation, resample, tmp, classes, progress, workers)
    except OSError as exc:  # a full disk (ENOSPC), a quota (EDQUOT), an I/O error; the folder is gone
        raise no_room_error(final.parent, needed, exc) from exc


def entry_bytes(n: int, size: int) -> int:
    """Bytes a cache entry of `n` images at `size` px takes: the pixels, labels, splits and metadata."""
    pixels = n * size * size * 3
    return pixels + n * (8 + 1) + 3 * 4096 + 64 * 1024  # headers, and room for a long corrupt list


def _free_bytes(folder: Path) -> int | None:
    """Free bytes in `folder`'s file system, or None when it cannot be told."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def no_room_error(folder: Path, needed: int, exc: OSError | None = None) -> OutputError:
    """The one-line error for a cache entry that cannot be written: the folder, the bytes needed, why."""
    free = _free_bytes(folder)
    why = f"{exc.strerror or first_line(exc)}; " if exc is not None else ""
    room = f", {free:,} bytes free there" if free is not None else ""
    return OutputError(
        f"cannot build a decode cache entry in {folder} ({why}it needs {needed:,} bytes "
        f"= {needed / 2**20:,.1f} MiB{room})",
        "free some space there, or set TLBENCH_CACHE to a folder with room, then run again",
    )


def _allocate(path: Path) -> None:
    """Reserve the disk blocks of a new (sparse) file, so writing it through a memory map cannot SIGBUS.

    Raises:
        OSError: ENOSPC when the disk has no room for it.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # a file system without fallocate leaves the free-space check alone
    finally:
        os.close(fd)


def _fill(
    source: Source,
    size: int,
    interpolation: str,
    resample: int,
    tmp: Path,
    classes: list[str],
    progress: bool,
    workers: int | None,
) -> None:
    """Decode every image of `source` into the new entry's files in `tmp`."""
    class_index = {wnid: i for i, wnid in enumerate(classes)}
    n = len(source.items)
    start = time.perf_counter()
    images = np.lib.format.open_memmap(
        tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
    )
    _allocate(tmp / "images.npy")
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
        _allocate(tmp / "images.compact.npy")
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
    # Written last and plainly: the whole folder is renamed into place, so no temp file is needed,
    # and a failed write surfaces here as the OSError that `_build` turns into its message.
    meta = {
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
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
