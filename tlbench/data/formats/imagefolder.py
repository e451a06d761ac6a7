"""The ImageFolder layout: `train/<wnid>/*.jpg`, `val/<wnid>/*.jpg` (or `validation/`), optional
`test/`; each image is a file, its class the folder it lies in, its split the one it was given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tlbench.data.formats.source import IMAGE_EXTENSIONS, Payload, Source, SourceItem, hidden
from tlbench.errors import DataError


def _split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def read_imagefolder(root: Path) -> Source:
    """Read an ImageFolder layout: every image file under `train/`, `val/` and `test/` by class folder."""
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
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not hidden(p)):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not hidden(path):
                    items.append(SourceItem(str(path.relative_to(root)), class_dir.name, group))
                    files.append(path)
    paths = [root / item.ref for item in items]

    def payloads() -> Iterator[tuple[int, Payload]]:
        yield from enumerate(paths)

    return Source("imagefolder", root, items, pooled=False, files=files, _payloads=payloads)
