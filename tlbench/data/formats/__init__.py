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

One module per layout family reads it (`imagefolder`, `ravi_csv`, `pickles`, `parquet`); what they
hand back (`Source`) and how payloads are opened and decoded is `source`. This module detects the
layout and picks the reader; every public name is importable from here.
"""

from __future__ import annotations

from pathlib import Path

from tlbench.data.formats.imagefolder import read_imagefolder
from tlbench.data.formats.parquet import parquet_shards, read_parquet
from tlbench.data.formats.pickles import read_pickle
from tlbench.data.formats.ravi_csv import read_ravi_csv
from tlbench.data.formats.source import (
    EXPECTED_LAYOUTS,
    IMAGE_EXTENSIONS,
    SPLIT_ALIASES,
    Payload,
    Refused,
    Source,
    SourceItem,
    decode_each,
    hidden,
    open_image,
)
from tlbench.errors import DataError

__all__ = [
    "EXPECTED_LAYOUTS",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "SPLIT_ALIASES",
    "Payload",
    "Refused",
    "Source",
    "SourceItem",
    "decode_each",
    "detect_format",
    "open_image",
    "read_source",
]

FORMATS = ("imagefolder", "ravi-csv", "pickle", "parquet")


def detect_format(root: Path) -> str:
    """Name the layout at `root`, or raise DataError saying what was expected."""
    if not root.exists():
        raise DataError(
            f"data folder {root} does not exist",
            "pass --data PATH to a mini-ImageNet copy, run `tlbench data download`, or use --data synthetic",
        )
    if not root.is_dir():
        raise DataError(f"--data {root} is not a folder", f"expected a folder holding {EXPECTED_LAYOUTS}")
    if parquet_shards(root):
        return "parquet"
    if list(root.glob("mini-imagenet-cache-*.pkl")):
        return "pickle"
    if (root / "images").is_dir() and any((root / f"{s}.csv").is_file() for s in ("train", "val", "test")):
        return "ravi-csv"
    if (root / "train").is_dir() and any(p.is_dir() and not hidden(p) for p in (root / "train").iterdir()):
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
        "imagefolder": read_imagefolder,
        "ravi-csv": read_ravi_csv,
        "pickle": read_pickle,
        "parquet": read_parquet,
    }[fmt]
    source = reader(root)
    if source._items is not None and not source._items:
        raise DataError(f"no images found in {root} ({fmt} layout)", f"expected {EXPECTED_LAYOUTS}")
    return source
