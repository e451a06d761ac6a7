"""`tlbench data synth`: a synthetic mini-ImageNet written in the real on-disk layouts.

Class k is the k-th of the standard sorted wnids and always looks the same (see
`tlbench.data.render`), so a 10-class set is a subset of the 100-class one. Splits follow each
layout's real convention:

- imagefolder: per class, round(n/6) to `val/`, the rest to `train/`;
- ravi-csv and pickle: a few-shot class split, 64 / 16 / 20 % of the classes to train / val / test;
- parquet: per class 10 : 2 : 1 to train / validation / test (500 / 100 / 50 in timm/mini-imagenet).
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tlbench._console import progress_bar
from tlbench._io import atomic_dir
from tlbench.data.classes import mini_imagenet_wnids
from tlbench.errors import DataError, OutputError

SYNTH_FORMATS = ("imagefolder", "ravi-csv", "pickle", "parquet")


def _jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _few_shot_class_split(num_classes: int, seed: int) -> dict[int, str]:
    """64 / 16 / 20 % of the classes to train / val / test, as Ravi & Larochelle's split."""
    order = np.random.default_rng(seed).permutation(num_classes)
    n_train = max(1, round(num_classes * 0.64))
    n_val = max(1, round(num_classes * 0.16)) if num_classes >= 3 else 0
    groups = {}
    for rank, c in enumerate(order.tolist()):
        groups[c] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return groups


def _per_class_counts(n: int, fmt: str) -> dict[str, int]:
    if fmt == "imagefolder":
        val = max(1, round(n / 6))
        return {"train": n - val, "val": val}
    test = max(1, round(n / 13)) if n >= 4 else 0
    val = max(1, round(2 * n / 13))
    return {"train": n - val - test, "val": val, "test": test}


def write_synthetic(
    out: str | Path,
    fmt: str = "imagefolder",
    classes: int = 100,
    per_class: int = 600,
    size: int = 84,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Render and write a synthetic data set to `out` (created; must not hold anything yet)."""
    from tlbench.data.render import render_class_images

    out = Path(out).expanduser()
    if fmt not in SYNTH_FORMATS:
        raise DataError(f"unknown synthetic format {fmt!r}", f"use one of {', '.join(SYNTH_FORMATS)}")
    if not 2 <= classes <= 100:
        raise DataError(f"--classes {classes} is out of range", "synthetic data has 2 to 100 classes")
    if per_class < 2:
        raise DataError(f"--per-class {per_class} is too small", "each class needs at least 2 images")
    if not 16 <= size <= 512:
        raise DataError(f"--size {size} is out of range", "use 16 to 512 pixels")
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out} already exists and is not empty", "choose a new folder or delete it first")
    wnids = list(mini_imagenet_wnids())[:classes]

    def render(k: int) -> tuple[int, np.ndarray]:
        return k, render_class_images(k, per_class, size, seed, num_classes=classes)

    with atomic_dir(out, complete=".complete") as tmp:
        writer = _WRITERS[fmt](tmp, wnids, per_class, seed)
        with progress_bar(progress and classes * per_class >= 2000) as bar:
            task = bar.add_task(f"rendering {classes} x {per_class} images ({fmt}, {size}px)", total=classes)
            with ThreadPoolExecutor(max_workers=2) as pool:
                for k, pixels in pool.map(render, range(classes)):
                    writer.add(k, pixels)
                    bar.advance(task)
        writer.finish()
        (tmp / ".complete").write_text(
            json.dumps(
                {"format": fmt, "classes": classes, "per_class": per_class, "size": size, "seed": seed}
            )
        )
    return out


class _Writer:
    def __init__(self, root: Path, wnids: list[str], per_class: int, seed: int) -> None:
        self.root, self.wnids, self.per_class, self.seed = root, wnids, per_class, seed

    def add(self, k: int, pixels: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass


class _ImageFolderWriter(_Writer):
    def add(self, k: int, pixels: np.ndarray) -> None:
        wnid = self.wnids[k]
        counts = _per_class_counts(len(pixels), "imagefolder")
        for i, img in enumerate(pixels):
            group = "train" if i < counts["train"] else "val"
            folder = self.root / group / wnid
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{wnid}_{i:05d}.JPEG").write_bytes(_jpeg(img))


class _RaviCsvWriter(_Writer):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.groups = _few_shot_class_split(len(self.wnids), self.seed)
        self.rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
        (self.root / "images").mkdir()

    def add(self, k: int, pixels: np.ndarray) -> None:
        wnid = self.wnids[k]
        for i, img in enumerate(pixels, start=1):
            name = f"{wnid}{i:08d}.jpg"
            (self.root / "images" / name).write_bytes(_jpeg(img))
            self.rows[self.groups[k]].append((name, wnid))

    def finish(self) -> None:
        for group, rows in self.rows.items():
            with (self.root / f"{group}.csv").open("w", newline="") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(("filename", "label"))
                writer.writerows(sorted(rows))


class _PickleWriter(_Writer):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.groups = _few_shot_class_split(len(self.wnids), self.seed)
        self.arrays: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}, "test": {}}

    def add(self, k: int, pixels: np.ndarray) -> None:
        self.arrays[self.groups[k]][self.wnids[k]] = pixels

    def finish(self) -> None:
        for group, by_class in self.arrays.items():
            if not by_class:
                continue
            class_dict, chunks, start = {}, [], 0
            for wnid in sorted(by_class):
                chunks.append(by_class[wnid])
                class_dict[wnid] = list(range(start, start + len(by_class[wnid])))
                start += len(by_class[wnid])
            data = {"image_data": np.concatenate(chunks), "class_dict": class_dict}
            with (self.root / f"mini-imagenet-cache-{group}.pkl").open("wb") as fh:
                pickle.dump(data, fh, protocol=4)


class _ParquetWriter(_Writer):
    SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.rows: dict[str, list[tuple[bytes, str, int]]] = {"train": [], "val": [], "test": []}

    def add(self, k: int, pixels: np.ndarray) -> None:
        wnid = self.wnids[k]
        counts = _per_class_counts(len(pixels), "parquet")
        for i, img in enumerate(pixels):
            group = (
                "train" if i < counts["train"] else "val" if i < counts["train"] + counts["val"] else "test"
            )
            self.rows[group].append((_jpeg(img), f"{wnid}_{i:05d}.JPEG", k))

    def finish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        hf_meta = {
            "info": {
                "features": {
                    "image": {"_type": "Image"},
                    "label": {"names": self.wnids, "_type": "ClassLabel"},
                }
            }
        }
        (self.root / "data").mkdir()
        for group, name in self.SPLITS:
            rows = sorted(self.rows[group], key=lambda r: (r[2], r[1]))
            if not rows:
                continue
            image = pa.array(
                [{"bytes": b, "path": p} for b, p, _ in rows],
                type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            )
            table = pa.table({"image": image, "label": pa.array([r[2] for r in rows], type=pa.int64())})
            table = table.replace_schema_metadata({"huggingface": json.dumps(hf_meta)})
            pq.write_table(table, self.root / "data" / f"{name}-00000-of-00001.parquet")


_WRITERS: dict[str, Callable[..., _Writer]] = {
    "imagefolder": _ImageFolderWriter,
    "ravi-csv": _RaviCsvWriter,
    "pickle": _PickleWriter,
    "parquet": _ParquetWriter,
}
