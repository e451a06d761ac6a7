"""`tlbench data check`: what a data folder holds, and whether tlbench can use it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tlbench._console import progress_bar
from tlbench.data.cache import HIGH_BIT_DEPTH, to_8_bit
from tlbench.data.classes import class_hash, is_standard_mini_imagenet
from tlbench.data.formats import Payload, decode_each, open_image, read_source


def _inspect(payload: Payload) -> tuple[int, int, bool]:
    """Decode fully (to catch truncated files); return (width, height, 16 bits per pixel)."""
    img = open_image(payload)
    img.load()
    to_8_bit(img)  # raises for the images the decoder refuses
    return (*img.size, img.mode in HIGH_BIT_DEPTH)


def check_data(root: str | Path, data_format: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Scan every image of a data set. Raises DataError when the layout itself is unusable."""
    source = read_source(root, data_format)
    classes = source.classes
    sizes: list[tuple[int, int]] = []
    high_bit_depth = 0
    corrupt: list[dict[str, str]] = []
    with progress_bar(progress and len(source.items) >= 2000) as bar:
        task = bar.add_task(f"checking {len(source.items)} images", total=len(source.items))
        for index, found, error in decode_each(source, _inspect):
            if found is None:
                corrupt.append({"ref": source.items[index].ref, "error": error or "unreadable"})
            else:
                sizes.append(found[:2])
                high_bit_depth += found[2]
            bar.advance(task)
    groups = Counter(item.group for item in source.items)
    per_group_classes = {g: sorted({i.wnid for i in source.items if i.group == g}) for g in groups}
    problems: list[str] = []
    if not source.pooled and set(per_group_classes.get("train", [])) != set(per_group_classes.get("val", [])):
        problems.append("train and val have different class sets")
    if corrupt:
        problems.append(f"{len(corrupt)} corrupt or unreadable image(s) (usable with --skip-corrupt)")
    notes = (
        [f"{high_bit_depth} image(s) with 16-bit grayscale pixels: scaled to 8 bits"]
        if high_bit_depth
        else []
    )
    per_class = Counter(item.wnid for item in source.items)
    widths = [w for w, _ in sizes] or [0]
    heights = [h for _, h in sizes] or [0]
    return {
        "path": str(source.root),
        "format": source.format,
        "num_classes": len(classes),
        "standard_mini_imagenet": is_standard_mini_imagenet(classes),
        "class_list_hash": class_hash(classes),
        "images": len(source.items),
        "source_splits": {g: groups[g] for g in ("train", "val", "test") if g in groups},
        "split_rule": "pooled, then per class 5/6 train, 1/6 val (seeded)" if source.pooled else "as given",
        "images_per_class": {"min": min(per_class.values()), "max": max(per_class.values())},
        "image_size": {
            "min": [min(widths), min(heights)],
            "max": [max(widths), max(heights)],
        },
        "corrupt": corrupt,
        "notes": source.notes + notes,
        "usable": not problems,
        "problems": problems,
    }
