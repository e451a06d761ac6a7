"""Detect and read the four mini-ImageNet layouts found in the wild.

Each reader turns a folder into a `Source`: one `SourceItem` per image (its class wnid and the
source split it came from) and a way to stream the undecoded payloads (a file path, encoded
bytes or a pixel array). Nothing is decoded here: `decode_each` runs a caller's decoder over the
payloads on threads (`tlbench.data.cache` decodes once, `tlbench.data.check` to find broken files).

| format | layout | splits |
| --- | --- | --- |
| imagefolder | `train/<wnid>/*.jpg`, `val/<wnid>/*.jpg`, optional `test/` | given per class |
| ravi-csv | `images/*.jpg` + `train.csv`, `val.csv`, `test.csv` (`filename,label`) | few-shot: pooled |
| pickle | `mini-imagenet-cache-{train,val|validation,test}.pkl` | few-shot: pooled |
| parquet | `data/{train,validation,test}-*.parquet` (`timm/mini-imagenet`) | given per class |

Hidden entries (`.ipynb_checkpoints/`, `._x.jpg`) are never classes or images. A file named by a csv
row must lie inside the data folder and be a regular file (never a device or pipe, which would hang
the decoder): another is listed as unreadable, like a corrupt image.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import re
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from tlbench._util import first_line
from tlbench.data.classes import mini_imagenet_wnids
from tlbench.errors import DataError

FORMATS = ("imagefolder", "ravi-csv", "pickle", "parquet")
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
_WNID = re.compile(r"^n\d{8}$")
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


def detect_format(root: Path) -> str:
    """Name the layout at `root`, or raise DataError saying what was expected."""
    if not root.exists():
        raise DataError(
            f"data folder {root} does not exist",
            "pass --data PATH to a mini-ImageNet copy, run `tlbench data download`, or use --data synthetic",
        )
    if not root.is_dir():
        raise DataError(f"--data {root} is not a folder", f"expected a folder holding {EXPECTED_LAYOUTS}")
    if _parquet_shards(root):
        return "parquet"
    if list(root.glob("mini-imagenet-cache-*.pkl")):
        return "pickle"
    if (root / "images").is_dir() and any((root / f"{s}.csv").is_file() for s in ("train", "val", "test")):
        return "ravi-csv"
    if (root / "train").is_dir() and any(p.is_dir() and not _hidden(p) for p in (root / "train").iterdir()):
        return "imagefolder"
    raise DataError(f"{root} is not a mini-ImageNet layout tlbench knows", f"expected {EXPECTED_LAYOUTS}")


def read_source(root: str | Path, data_format: str | None = None) -> Source:
    """Read the layout at `root` (detected unless `data_format` forces one)."""
    root = Path(root).expanduser().resolve()
    fmt = data_format or detect_format(root)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if not root.is_dir():
        detect_format(root)  # raises the right message
    reader = {
        "imagefolder": _read_imagefolder,
        "ravi-csv": _read_ravi_csv,
        "pickle": _read_pickle,
        "parquet": _read_parquet,
    }[fmt]
    source = reader(root)
    if source._items is not None and not source._items:
        raise DataError(f"no images found in {root} ({fmt} layout)", f"expected {EXPECTED_LAYOUTS}")
    return source


def _hidden(path: Path) -> bool:
    """`.ipynb_checkpoints/`, `.DS_Store`, `._x.jpg`: never a class or an image.

    (torchvision's ImageFolder lists hidden folders as classes: the `.ipynb_checkpoints` trap.)
    """
    return path.name.startswith(".")


def _whole_number(value: Any) -> int | None:
    """`value` as an int when it is a whole number (7, 7.0, numpy integers), else None (0.7, "7", True)."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return None


# --- imagefolder ---------------------------------------------------------------------------------


def _split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _read_imagefolder(root: Path) -> Source:
    train = _split_dir(root, ("train",))
    val = _split_dir(root, ("val", "validation"))
    test = _split_dir(root, ("test",))
    if train is None or val is None:
        missing = "train/" if train is None else "val/"
        raise DataError(
            f"{root} looks like an ImageFolder layout but has no {missing}",
            "expected train/<wnid>/*.jpg and val/<wnid>/*.jpg (test/ optional)",
        )
    items: list[SourceItem] = []
    files: list[Path] = []
    for group, folder in (("train", train), ("val", val), ("test", test)):
        if folder is None:
            continue
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p)):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not _hidden(path):
                    items.append(SourceItem(str(path.relative_to(root)), class_dir.name, group))
                    files.append(path)
    paths = [root / item.ref for item in items]

    def payloads() -> Iterator[tuple[int, Payload]]:
        yield from enumerate(paths)

    return Source("imagefolder", root, items, pooled=False, files=files, _payloads=payloads)


# --- Ravi & Larochelle csv -----------------------------------------------------------------------


def _read_ravi_csv(root: Path) -> Source:
    items: list[SourceItem] = []
    files: list[Path] = []
    notes: list[str] = []
    for group in ("train", "val", "test"):
        csv_path = root / f"{group}.csv"
        if not csv_path.is_file():
            continue
        files.append(csv_path)
        with csv_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            label_key = "label" if "label" in header else "class" if "class" in header else None
            if "filename" not in header or label_key is None:
                raise DataError(
                    f"{csv_path} has columns {header}, not filename,label",
                    "a Ravi & Larochelle csv starts with the header 'filename,label'",
                )
            if label_key == "class":
                notes.append(f"{csv_path.name}: 'filename,class' header (Vinyals-style class list)")
            for line_no, row in enumerate(reader, start=2):
                name, wnid = (row.get("filename") or "").strip(), (row.get(label_key) or "").strip()
                if not name or not wnid:
                    raise DataError(
                        f"{csv_path}:{line_no} is malformed: {row}", "each row needs filename,label"
                    )
                items.append(SourceItem(f"images/{name}", wnid, group))
    paths = [_csv_row_path(root, item.ref) for item in items]
    files.extend(p for p in paths if isinstance(p, Path) and p.exists())

    def payloads() -> Iterator[tuple[int, Payload]]:
        yield from enumerate(paths)

    return Source("ravi-csv", root, items, pooled=True, files=files, notes=notes, _payloads=payloads)


def _csv_row_path(root: Path, ref: str) -> Path | Refused:
    """The file a csv row names, or Refused when it lies outside `root` (`../../dev/stdin`, `/etc/x`).

    The test is on the path as written (`..` collapsed), not on where symlinks lead: a data folder
    whose `images/` is a link to another disk stays usable. `open_image` refuses non-regular files.
    """
    path = Path(os.path.normpath(root / ref))
    if path == root or not path.is_relative_to(root):
        return Refused(f"{ref} lies outside the data folder {root}")
    return path


# --- pickle caches -------------------------------------------------------------------------------


class _SafeUnpickler(pickle.Unpickler):
    """Only numpy arrays and plain containers: a cache file cannot run code."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data cache")


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            try:
                obj = _SafeUnpickler(fh).load()
            except UnicodeDecodeError:
                fh.seek(0)
                obj = _SafeUnpickler(fh, encoding="latin1").load()
    except MemoryError:
        raise
    except Exception as exc:  # a damaged pickle raises many types (EOFError, KeyError, TypeError, ...)
        raise DataError(
            f"cannot read pickle cache {path.name} ({first_line(exc)})",
            "re-download or re-create it",
        ) from exc
    if not isinstance(obj, dict) or "image_data" not in obj or "class_dict" not in obj:
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{path.name} is not a mini-ImageNet cache (found {keys})",
            "expected a dict with 'image_data' (N,H,W,3 uint8) and 'class_dict' {wnid: [indices]}",
        )
    data = np.asarray(obj["image_data"])
    if data.ndim != 4 or data.shape[-1] != 3:
        raise DataError(f"{path.name}: image_data has shape {data.shape}", "expected (N, H, W, 3) uint8")
    return {"image_data": data, "class_dict": _class_dict(path, obj["class_dict"], len(data))}


def _class_dict(path: Path, raw: Any, n: int) -> dict[str, list[int]]:
    """A pickle's `class_dict` checked: wnid strings to whole-number indices into its `n` images."""
    fix = "expected 'class_dict' {wnid: [indices into image_data]}; re-download or re-create the file"
    if not isinstance(raw, dict):
        raise DataError(f"{path.name}: class_dict is a {type(raw).__name__}, not a dict", fix)
    out: dict[str, list[int]] = {}
    for wnid, indices in raw.items():
        if not isinstance(wnid, str) or not wnid:
            raise DataError(f"{path.name}: class_dict key {wnid!r} is not a class name", fix)
        if isinstance(indices, str | bytes | dict) or not hasattr(indices, "__iter__"):
            raise DataError(f"{path.name}: class {wnid} has {type(indices).__name__} {indices!r:.40}", fix)
        out[wnid] = []
        for value in indices:
            idx = _whole_number(value)
            if idx is None or not 0 <= idx < n:
                raise DataError(
                    f"{path.name}: class {wnid} index {value!r:.40} is not an image index 0..{n - 1}", fix
                )
            out[wnid].append(idx)
    return out


def _pickle_files(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(root.glob("mini-imagenet-cache-*.pkl")):
        split = path.stem.removeprefix("mini-imagenet-cache-")
        group = SPLIT_ALIASES.get(split)
        if group is None:
            raise DataError(
                f"unexpected pickle cache name {path.name}", "expected train, val/validation or test"
            )
        if group in found:
            raise DataError(
                f"both {found[group].name} and {path.name} exist", "keep one of the -val / -validation files"
            )
        found[group] = path
    return found


def _read_pickle(root: Path) -> Source:
    # Listing the items means unpickling every cache (1.3 GB for mini-ImageNet): done only when the
    # decode cache has no entry for these files yet, or for `data check`.
    found = _pickle_files(root)
    spans: list[tuple[Path, list[int]]] = []

    def lister() -> list[SourceItem]:
        items: list[SourceItem] = []
        for group in ("train", "val", "test"):
            if group not in found:
                continue
            cache = _load_pickle(found[group])
            order: list[int] = []
            for wnid in sorted(cache["class_dict"]):
                for idx in cache["class_dict"][wnid]:
                    items.append(SourceItem(f"{found[group].name}:{idx}", str(wnid), group))
                    order.append(idx)
            spans.append((found[group], order))
        if not items:
            raise DataError(f"no images found in {root} (pickle layout)", f"expected {EXPECTED_LAYOUTS}")
        return items

    def payloads() -> Iterator[tuple[int, Payload]]:
        source.items  # noqa: B018 - lists the items (and the spans) if not done yet
        i = 0
        for path, order in spans:
            data = _load_pickle(path)["image_data"]
            for idx in order:
                yield i, data[idx]
                i += 1

    source = Source(
        "pickle", root, None, pooled=True, files=list(found.values()), _payloads=payloads, _lister=lister
    )
    return source


# --- parquet (timm/mini-imagenet) ----------------------------------------------------------------


def _parquet_shards(root: Path) -> dict[str, list[Path]]:
    shards: dict[str, list[Path]] = {}
    for folder in (root / "data", root):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.parquet")):
            split = path.name.split("-", 1)[0]
            group = SPLIT_ALIASES.get(split)
            if group is not None:
                shards.setdefault(group, []).append(path)
        if shards:
            break
    return shards


def _parquet_error(path: Path, exc: BaseException) -> DataError:
    return DataError(f"cannot read parquet shard {path.name} ({first_line(exc)})", "re-download the data set")


def _parquet_label_names(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:  # pyarrow raises many types for a bad file (ArrowInvalid, OSError)
        raise _parquet_error(path, exc) from exc
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        names = features["label"]["names"]
        return [str(n) for n in names]
    except (KeyError, TypeError, ValueError):
        return None


def _read_parquet(root: Path) -> Source:
    import pyarrow.parquet as pq

    shards = _parquet_shards(root)
    if "train" not in shards or "val" not in shards:
        raise DataError(
            f"{root} has parquet shards for {sorted(shards)} only",
            "expected train-*.parquet and validation-*.parquet",
        )
    notes: list[str] = []
    names = _parquet_label_names(shards["train"][0])
    standard = list(mini_imagenet_wnids())
    # A string label must be a class name of the metadata; without metadata any name is its own class.
    by_name = None if names is None else {name: name for name in names}
    if names is None:
        names = standard
        notes.append(
            "parquet has no class names in its metadata: labels read as the standard sorted 100 wnids"
        )
    elif len(names) == len(standard) and not all(_WNID.match(n) for n in names):
        # Class names written as words ('house_finch'): timm/mini-imagenet's integer labels follow the
        # sorted standard wnids, which are what runs and the ImageNet-1k baseline mapping need.
        notes.append(
            f"parquet class names are not wnids (e.g. {names[0]!r}): "
            "labels read as the standard sorted 100 wnids"
        )
        by_name = {word: wnid for word, wnid in zip(names, standard, strict=True)} | {w: w for w in standard}
        names = standard
    items: list[SourceItem] = []
    order: list[Path] = []
    for group in ("train", "val", "test"):
        for path in shards.get(group, []):
            try:
                columns = set(pq.read_schema(path).names)
            except Exception as exc:  # pyarrow raises many types for a bad file
                raise _parquet_error(path, exc) from exc
            if not {"image", "label"} <= columns:
                raise DataError(
                    f"{path.name} has columns {sorted(columns)}, not image and label",
                    "expected the timm/mini-imagenet parquet layout (image: {bytes, path}, label: int)",
                )
            try:
                labels = pq.read_table(path, columns=["label"]).column("label").to_pylist()
            except Exception as exc:  # pyarrow raises many types for a bad file
                raise _parquet_error(path, exc) from exc
            for row, label in enumerate(labels):
                wnid = _parquet_class(label, names, by_name)
                if wnid is None:
                    raise DataError(
                        f"{path.name} row {row}: label {label!r:.40} is neither a class index "
                        f"0..{len(names) - 1} nor a class name",
                        "labels must be whole numbers into the sorted class list, or class names; "
                        "fix the shard or re-download the data set",
                    )
                items.append(SourceItem(f"{path.relative_to(root)}:{row}", wnid, group))
            order.append(path)

    def payloads() -> Iterator[tuple[int, Payload]]:
        i = 0
        for path in order:
            try:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=512, columns=["image"]):
                    for cell in batch.column("image").to_pylist():
                        yield i, (cell or {}).get("bytes") or b""
                        i += 1
            except Exception as exc:  # a shard damaged (or replaced) since it was listed
                raise _parquet_error(path, exc) from exc

    return Source("parquet", root, items, pooled=False, files=order, notes=notes, _payloads=payloads)


def _parquet_class(label: Any, names: list[str], by_name: dict[str, str] | None) -> str | None:
    """The wnid of a parquet label: an index into `names`, or a class name (`by_name`; any when None)."""
    if isinstance(label, str):
        return (label or None) if by_name is None else by_name.get(label)
    index = _whole_number(label)
    return names[index] if index is not None and 0 <= index < len(names) else None


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
