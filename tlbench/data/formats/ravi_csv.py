"""The Ravi & Larochelle few-shot layout: `images/*.jpg` with `train.csv`, `val.csv` and `test.csv`
(`filename,label`, or Vinyals-style `filename,class`). Its splits are few-shot ones (disjoint
classes), so the source is pooled: `tlbench.data.dataset` draws its own split per class.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from tlbench.data.formats.source import Payload, Refused, Source, SourceItem
from tlbench.errors import DataError


def read_ravi_csv(root: Path) -> Source:
    """Read a Ravi & Larochelle layout: the rows of its csv files, pooled (few-shot splits)."""
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
