"""`tlbench demo`: the data pipeline end to end on the built-in synthetic data.

Builds the synthetic mini-ImageNet (once), checks it, decodes it into the packed cache (once),
then runs one epoch of the training loader with the Keras augmentation and reports what it saw.
"""

from __future__ import annotations

import time

from tlbench._console import console


def run_demo(data: str, image_size: int, batch_size: int) -> None:
    import torch
    from rich.table import Table

    from tlbench.data.augment import BatchTransform, KerasAugment
    from tlbench.data.check import check_data
    from tlbench.data.dataset import load_data, resolve_data
    from tlbench.data.loader import BatchLoader

    out = console()
    t0 = time.perf_counter()
    root = resolve_data(data)
    out.print(f"[bold]data[/] {root}  (ready in {time.perf_counter() - t0:.1f} s)")
    report = check_data(root)
    out.print(
        f"[bold]check[/] {report['format']}, {report['num_classes']} classes "
        f"(standard 100: {report['standard_mini_imagenet']}), {report['images']} images, "
        f"class-list hash {report['class_list_hash']}, corrupt {len(report['corrupt'])}"
    )
    t0 = time.perf_counter()
    bundle = load_data(root, image_size, "nearest")
    out.print(
        f"[bold]packed[/] {bundle.info['counts']} at {image_size}px (nearest) in "
        f"{time.perf_counter() - t0:.1f} s -> {bundle.info['cache']}"
    )
    loader = BatchLoader(
        bundle.train.packed.images,
        bundle.train.packed.labels,
        bundle.train.indices,
        batch_size,
        device="cpu",
        shuffle=True,
        seed=0,
    )
    transform = BatchTransform(KerasAugment(), seed=0)
    seen = 0
    labels = torch.zeros(bundle.num_classes, dtype=torch.long)
    lo, hi, total = float("inf"), float("-inf"), 0.0
    t0 = time.perf_counter()
    for x, y in loader:
        batch = transform(x)
        seen += len(y)
        labels += torch.bincount(y, minlength=bundle.num_classes)
        lo, hi, total = min(lo, batch.min().item()), max(hi, batch.max().item()), total + batch.sum().item()
    seconds = time.perf_counter() - t0
    pixels = seen * 3 * image_size * image_size
    table = Table(title="one training epoch through loader + Keras augmentation (CPU)", title_justify="left")
    for col in ("batches", "images", "images/s", "batch shape", "value range", "mean", "classes seen"):
        table.add_column(col)
    table.add_row(
        str(len(loader)),
        str(seen),
        f"{seen / seconds:,.0f}",
        f"{tuple(batch.shape)}",
        f"[{lo:.3f}, {hi:.3f}]",
        f"{total / pixels:.3f}",
        f"{int((labels > 0).sum())}/{bundle.num_classes}",
    )
    out.print(table)
    out.print("split rule: " + bundle.info["split_rule"])
