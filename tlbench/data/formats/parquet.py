"""The parquet shards of `timm/mini-imagenet` (Hugging Face): `data/{train,validation,test}-*.parquet`
with an `image` column ({bytes, path}) and an integer `label` into the class names of the shards'
metadata (or, without metadata, the standard sorted 100 wnids). pyarrow loads inside the functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlbench._util import first_line
from tlbench.data.classes import mini_imagenet_wnids
from tlbench.data.formats.source import SPLIT_ALIASES, Payload, Source, SourceItem, whole_number
from tlbench.errors import DataError

_WNID = re.compile(r"^n\d{8}$")


def parquet_shards(root: Path) -> dict[str, list[Path]]:
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


def read_parquet(root: Path) -> Source:
    """Read the parquet shards at `root`: labels now, image bytes streamed when decoded."""
    import pyarrow.parquet as pq

    shards = parquet_shards(root)
    if "train" not in shards or "val" not in shards:
        raise DataError(
            f"{root} has parquet shards for {sorted(shards)} only",
            "expected train-*.parquet and validation-*.parquet",
        )
    names, by_name, notes = _class_names(shards["train"][0])
    items: list[SourceItem] = []
    order: list[Path] = []
    for group in ("train", "val", "test"):
        for path in shards.get(group, []):
            for row, label in enumerate(_shard_labels(path)):
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


def _class_names(train_shard: Path) -> tuple[list[str], dict[str, str] | None, list[str]]:
    """The class list integer labels index into, the names a string label may be (wnid by name;
    None: any name is its own class), and notes on how they were read."""
    notes: list[str] = []
    names = _parquet_label_names(train_shard)
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
    return names, by_name, notes


def _shard_labels(path: Path) -> list[Any]:
    """The `label` column of a shard, after checking it has `image` and `label` columns."""
    import pyarrow.parquet as pq

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
        return pq.read_table(path, columns=["label"]).column("label").to_pylist()
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise _parquet_error(path, exc) from exc


def _parquet_class(label: Any, names: list[str], by_name: dict[str, str] | None) -> str | None:
    """The wnid of a parquet label: an index into `names`, or a class name (`by_name`; any when None)."""
    if isinstance(label, str):
        return (label or None) if by_name is None else by_name.get(label)
    index = whole_number(label)
    return names[index] if index is not None and 0 <= index < len(names) else None
