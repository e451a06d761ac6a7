"""The pickle caches of the few-shot literature: `mini-imagenet-cache-{train,val|validation,test}.pkl`,
each a dict of `image_data` (N, H, W, 3 uint8) and `class_dict` {wnid: [indices]}. Pooled, like the
csv layout. Unpickling admits numpy arrays and plain containers only (a cache file cannot run
code), and happens only when the items are needed: a decode-cache hit never unpickles 1.3 GB.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tlbench._util import first_line
from tlbench.data.formats.source import (
    EXPECTED_LAYOUTS,
    SPLIT_ALIASES,
    Payload,
    Source,
    SourceItem,
    whole_number,
)
from tlbench.errors import DataError


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
            idx = whole_number(value)
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


def read_pickle(root: Path) -> Source:
    """Read the pickle caches at `root`; their items are listed (unpickled) only when asked."""
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
