"""From a `--data` argument to train / validation splits of packed images.

`load_data` resolves the argument (a path, `synthetic[...]`, or the default data root), reads the
layout, decodes it once through the cache, pins the class list and makes the 100-way split.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlbench._util import user_cache
from tlbench.data.cache import GROUPS, Packed, build_or_load
from tlbench.data.classes import STANDARD_CLASS_LIST, class_hash, is_standard_mini_imagenet
from tlbench.data.formats import read_source
from tlbench.errors import DataError

VAL_FRACTION = 1 / 6  # 100 of 600 per class, as timm/mini-imagenet's 500/100
SYNTHETIC_DEFAULT = "synthetic:100x60@84"
_SYNTH_RE = re.compile(
    r"^synthetic(?::(?P<classes>\d+)x(?P<per_class>\d+)(?:@(?P<size>\d+))?)?(?:/(?P<fmt>[a-z-]+))?$"
)


class NonStandardClassesWarning(UserWarning):
    """The data set's classes are not the standard mini-ImageNet 100."""


def default_data_root() -> Path:
    """`$TLBENCH_DATA`, else `<user cache>/tlbench/data`."""
    env = os.environ.get("TLBENCH_DATA")
    if env:
        return Path(env).expanduser()
    return user_cache() / "data"


@dataclass(frozen=True)
class SynthSpec:
    classes: int = 100
    per_class: int = 60
    size: int = 84
    format: str = "imagefolder"
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.format}-{self.classes}x{self.per_class}-{self.size}px-s{self.seed}"


def parse_synthetic(spec: str) -> SynthSpec | None:
    """`synthetic[:CLASSESxPER_CLASS[@SIZE]][/FORMAT]` -> SynthSpec, or None for a path."""
    if not spec.startswith("synthetic"):
        return None
    m = _SYNTH_RE.match(spec)
    if not m:
        raise DataError(
            f"cannot parse --data {spec!r}",
            "use synthetic or synthetic:CLASSESxPER_CLASS[@SIZE][/FORMAT], e.g. synthetic:10x60@32",
        )
    default = SynthSpec()
    out = SynthSpec(
        classes=int(m["classes"] or default.classes),
        per_class=int(m["per_class"] or default.per_class),
        size=int(m["size"] or default.size),
        format=m["fmt"] or default.format,
    )
    if not 2 <= out.classes <= 100 or out.per_class < 2 or not 16 <= out.size <= 512:
        raise DataError(f"--data {spec!r} is out of range", "classes 2-100, per class >= 2, size 16-512")
    return out


def resolve_data(spec: str | Path | None, *, progress: bool = True) -> Path:
    """Turn a `--data` argument into a folder, building the synthetic set if asked for."""
    if spec is None or str(spec) == "":
        root = default_data_root() / "mini-imagenet"
        if root.is_dir():
            return root
        raise DataError(
            f"no --data given and no data set at the default location {root}",
            "run `tlbench data download`, pass --data PATH, or try --data synthetic",
        )
    synth = parse_synthetic(str(spec))
    if synth is None:
        return Path(spec).expanduser()
    from tlbench.data.synth import write_synthetic

    folder = default_data_root() / "synthetic" / synth.name
    if not (folder / ".complete").exists():
        write_synthetic(
            folder, synth.format, synth.classes, synth.per_class, synth.size, synth.seed, progress
        )
    return folder


@dataclass
class Split:
    """One split: indices into the packed images, with their labels."""

    packed: Packed
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.packed.labels[self.indices]

    @property
    def images(self) -> np.ndarray:
        """The split's images (a copy in memory: use the loader for training)."""
        return self.packed.images[self.indices]


@dataclass
class DataBundle:
    """The splits of a data set. `select` is the selection split (`hold_out_selection`), taken from
    the training split: `train` is then what is left of it, and `selection` says what was taken."""

    train: Split
    val: Split
    test: Split | None
    classes: list[str]
    info: dict[str, Any]
    select: Split | None = None
    selection: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def split_pooled(labels: np.ndarray, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle; the first round(n/6) go to validation, the rest to training."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(len(idx) - 1, max(1, round(len(idx) * VAL_FRACTION))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def hold_out_selection(
    data: DataBundle, parsed: tuple[str, float] | None, spec: str, seed: int
) -> DataBundle:
    """The data with a selection split held out of its training split, per class and seeded.

    Per class, the training images are shuffled with a generator seeded by (`seed`, "select") and
    the first k are held out: k = round(P x n) for a fraction P (at least 1, at most n - 1), or N.
    The validation (and test) split is never touched, so the selection images are disjoint from
    both by construction, and from the images the run trains on.

    Args:
        data: From `load_data`.
        parsed: `tlbench.config.run.parse_select(spec)`: `("fraction", P)`, `("count", N)` or None.
        spec: The spec as written (`10%`), for the record.
        seed: The split seed (`--split-seed`).

    Returns:
        `data` itself for None; else a copy whose `train` lacks the selection images, `select`
        holds them and `selection` records them (`Resolved.selection`).

    Raises:
        ConfigError: A class cannot spare the images asked for (it would keep none to train on).
    """
    if parsed is None:
        return data
    from tlbench.errors import ConfigError

    kind, value = parsed
    train_idx, labels = data.train.indices, data.train.labels
    rng = np.random.default_rng([seed, 0x5E1EC7])  # a stream of its own: the val split's draws unchanged
    held, kept, per_class = [], [], {}
    for c, wnid in enumerate(data.classes):
        idx = train_idx[labels == c]
        n = len(idx)
        k = int(value) if kind == "count" else min(n - 1, max(1, int(np.floor(value * n + 0.5))))
        if k >= n:
            raise ConfigError(
                "select",
                f"{spec} is more than class {wnid} can spare (it has {n} training image(s))",
                "a class keeps at least one training image: ask for fewer, or a percentage",
            )
        idx = idx[rng.permutation(n)]
        held.append(idx[:k])
        kept.append(idx[k:])
        per_class[wnid] = k
    select_idx, train_left = np.sort(np.concatenate(held)), np.sort(np.concatenate(kept))
    if len(select_idx) == 0:  # every class has a single training image
        raise ConfigError("select", f"{spec} holds out no image", "the classes have 1 training image each")
    rule = (
        f"per class a seeded shuffle of the training split (split seed {seed}); "
        + (f"the first {int(value)}" if kind == "count" else f"round({spec} of n), at least 1, at most n - 1")
        + " held out for selection"
    )
    selection = {
        "spec": spec,
        "split_seed": seed,
        "rule": rule,
        "images": len(select_idx),
        "train_images": len(train_left),
        "per_class": per_class,
        "fingerprint": selection_fingerprint(data.info, select_idx),
    }
    return DataBundle(
        train=Split(data.train.packed, train_left),
        val=data.val,
        test=data.test,
        classes=data.classes,
        info=data.info,
        select=Split(data.train.packed, select_idx),
        selection=selection,
    )


def selection_fingerprint(info: dict[str, Any], indices: np.ndarray) -> str:
    """A short hash of the held-out images: their positions in the decoded source (whose order is
    fixed by its files) with the class list. Two runs on the same data set (`source_fingerprint`)
    with the same fingerprint held out the same images."""
    import hashlib

    digest = hashlib.sha256(str(info.get("class_list_hash")).encode())
    digest.update(np.asarray(indices, dtype="<i8").tobytes())
    return digest.hexdigest()[:16]


def load_data(
    spec: str | Path | None,
    image_size: int,
    interpolation: str = "nearest",
    *,
    data_format: str | None = None,
    split_seed: int = 0,
    skip_corrupt: bool = False,
    cache_root: Path | None = None,
    progress: bool = True,
) -> DataBundle:
    """Read, decode (once) and split a data set for 100-way (or N-way) classification."""
    root = resolve_data(spec, progress=progress)
    source = read_source(root, data_format)
    packed = build_or_load(
        source, image_size, interpolation, skip_corrupt=skip_corrupt, cache_root=cache_root, progress=progress
    )
    classes = packed.classes
    groups = packed.groups
    if source.pooled:
        train_idx, val_idx = split_pooled(packed.labels, len(classes), split_seed)
        test_idx = None
        split_rule = (
            f"pooled all source splits; per class a seeded shuffle (seed {split_seed}), "
            f"round(n/6) to validation, the rest to training"
        )
    else:
        train_idx = np.flatnonzero(groups == GROUPS.index("train"))
        val_idx = np.flatnonzero(groups == GROUPS.index("val"))
        test = np.flatnonzero(groups == GROUPS.index("test"))
        test_idx = test if len(test) else None
        split_rule = "as given by the source (train / val" + (" / test)" if test_idx is not None else ")")
        train_classes = set(np.unique(packed.labels[train_idx]).tolist())
        val_classes = set(np.unique(packed.labels[val_idx]).tolist())
        if train_classes != val_classes:
            only_train = sorted(classes[i] for i in train_classes - val_classes)
            only_val = sorted(classes[i] for i in val_classes - train_classes)
            raise DataError(
                f"train and validation have different classes in {root} "
                f"(only in train: {only_train[:5]}, only in val: {only_val[:5]})",
                "every class needs images in both splits",
            )
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class(es)", "classification needs at least 2 classes")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"{root} has an empty train or validation split", "each class needs at least 2 images"
        )
    standard = is_standard_mini_imagenet(classes)
    if not standard:
        warnings.warn(
            f"{len(classes)} classes that are not the standard mini-ImageNet 100; "
            "results are not comparable with published mini-ImageNet numbers",
            NonStandardClassesWarning,
            stacklevel=2,
        )
    info = {
        "root": str(root),
        "spec": str(spec) if spec is not None else None,
        "format": source.format,
        "num_classes": len(classes),
        "class_list_hash": class_hash(classes),
        "standard_mini_imagenet": standard,
        "synthetic": (root / ".complete").is_file(),  # written by `tlbench data synth`
        "class_list": STANDARD_CLASS_LIST if standard else "custom",
        "split_rule": split_rule,
        "split_seed": split_seed if source.pooled else None,
        "image_size": image_size,
        "interpolation": interpolation,
        "counts": {
            "train": len(train_idx),
            "val": len(val_idx),
            "test": 0 if test_idx is None else len(test_idx),
        },
        "corrupt_skipped": len(packed.meta.get("corrupt", [])),
        "cache": str(packed.path),
        "source_fingerprint": packed.meta["fingerprint"],
        "notes": packed.meta.get("notes", []),
    }
    return DataBundle(
        train=Split(packed, train_idx),
        val=Split(packed, val_idx),
        test=Split(packed, test_idx) if test_idx is not None else None,
        classes=classes,
        info=info,
    )
