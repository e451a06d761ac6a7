"""`tlbench baseline`: what zero training already scores.

The pretrained ImageNet-1k classifier, untouched, with its 1000 logits restricted to the data set's
classes (each wnid's ImageNet-1k logit index, from the files timm ships), evaluated on the
validation split. Every classic mini-ImageNet image comes from ImageNet-1k's training set, so this
number is the floor any fine-tuned result should be read against (REFERENCE.md section 3).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tlbench._console import console
from tlbench._io import check_writable, write_json, write_text
from tlbench.errors import DataError, OutputError, WeightsError


def imagenet_indices(classes: list[str]) -> list[int]:
    """ImageNet-1k logit index of each wnid, or DataError naming those that are not ImageNet-1k classes."""
    from tlbench.data.classes import imagenet1k_wnids

    position = {wnid: i for i, wnid in enumerate(imagenet1k_wnids())}
    missing = [c for c in classes if c not in position]
    if missing:
        raise DataError(
            f"{len(missing)} class(es) are not ImageNet-1k wnids ({', '.join(missing[:5])})",
            "the zero-training baseline needs ImageNet-1k classes; skip it with --no-baseline",
        )
    return [position[c] for c in classes]


def _classifier(backbone: str, weights: str | None) -> tuple[torch.nn.Module, str]:
    """The full timm model with its 1000-class ImageNet head."""
    import timm

    from tlbench.models.backbone import check_backbone
    from tlbench.models.weights import create_pretrained, read_state_dict, resolve_weights_path

    check_backbone(backbone)
    if weights is None:
        model, source = create_pretrained(backbone)
    else:
        path = resolve_weights_path(weights)
        model = timm.create_model(backbone, pretrained=False)
        state = read_state_dict(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"{path} does not hold a full {backbone} classifier ({str(exc).splitlines()[0][:120]})",
                "the baseline needs the ImageNet-1k head too: pass the complete checkpoint",
            ) from exc
        source = f"file: {path}"
    if getattr(model, "num_classes", None) != 1000:
        raise WeightsError(
            f"{backbone}'s classifier has {getattr(model, 'num_classes', '?')} classes, not 1000",
            "choose an ImageNet-1k checkpoint (a .*in1k tag)",
        )
    return model, source


def run_baseline(
    backbone: str,
    data: str | None,
    *,
    data_format: str | None = None,
    split_seed: int = 0,
    skip_corrupt: bool = False,
    image_size: int | None = None,
    batch_size: int = 64,
    weights: str | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Evaluate the restricted ImageNet classifier; write a run directory of kind `baseline`."""
    from timm.data import resolve_data_config

    from tlbench.data.augment import BatchTransform
    from tlbench.data.dataset import load_data
    from tlbench.data.loader import BatchLoader
    from tlbench.train.env import environment
    from tlbench.train.loop import resolve_device

    start = time.perf_counter()
    dev = resolve_device(device)
    run_dir = (
        Path(out) if out else Path("results/runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}-baseline"
    )
    if run_dir.exists() and any(run_dir.iterdir()):
        raise OutputError(f"{run_dir} already holds files", "choose another --out")
    check_writable(run_dir)
    model, source = _classifier(backbone, weights)
    cfg = resolve_data_config(model=model)
    size = image_size or int(cfg["input_size"][-1])
    # timm's ImageNet evaluation: resize to size / crop_pct, then a centre crop of size
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    resize = max(size, math.floor(size / crop_pct))
    top = (resize - size) // 2
    interpolation = cfg.get("interpolation", "bilinear")
    interpolation = interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear"
    bundle = load_data(
        data,
        resize,
        interpolation,
        data_format=data_format,
        split_seed=split_seed,
        skip_corrupt=skip_corrupt,
        progress=progress,
    )
    indices = imagenet_indices(bundle.classes)
    model.to(dev).eval()
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    transform = BatchTransform(None, mean, std)
    loader = BatchLoader.from_split(bundle.val, batch_size, dev, shuffle=False)
    restrict = torch.tensor(indices, device=dev)
    n, top1, top5, loss_sum = 0, 0, 0, 0.0
    correct = np.zeros(bundle.num_classes, dtype=np.int64)
    total = np.zeros(bundle.num_classes, dtype=np.int64)
    eval_start = time.perf_counter()
    with torch.no_grad():
        for x, y in loader:
            x = x[:, top : top + size, top : top + size]
            logits = model(transform(x)).float()[:, restrict]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(1)
            top1 += int((pred == y).sum())
            k = min(5, logits.shape[1])
            top5 += int((logits.topk(k, 1).indices == y[:, None]).any(1).sum())
            n += len(y)
            np.add.at(total, y.cpu().numpy(), 1)
            np.add.at(correct, y[pred == y].cpu().numpy(), 1)
    seconds = time.perf_counter() - eval_start
    config: dict[str, Any] = {
        "kind": "baseline",
        "schema_version": 1,
        "backbone": backbone,
        "weights_source": source,
        "data": data,
        "data_info": bundle.info,
        "classes": bundle.classes,
        "imagenet1k_indices": indices,
        "preprocessing": {
            "resize": resize,
            "center_crop": size,
            "crop_pct": crop_pct,
            "interpolation": interpolation,
            "mean": mean,
            "std": std,
        },
        "device_resolved": str(dev),
        "rule": "pretrained ImageNet-1k logits restricted to the data set's classes; argmax over those",
    }
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "env.json", environment(dev))
    lines = ["class_index,wnid,imagenet1k_index,correct,total,top1"]
    for i, wnid in enumerate(bundle.classes):
        acc = correct[i] / total[i] if total[i] else float("nan")
        lines.append(f"{i},{wnid},{indices[i]},{correct[i]},{total[i]},{acc:.6g}")
    write_text(run_dir / "per_class.csv", "\n".join(lines) + "\n")
    summary = {
        "status": "finished",
        "kind": "baseline",
        "val_top1": top1 / max(1, n),
        "val_top5": top5 / max(1, n),
        "val_loss": loss_sum / max(1, n),
        "images": n,
        "infer_images_per_sec": n / seconds if seconds else None,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "device": str(dev),
        "weights_source": source,
    }
    write_json(run_dir / "summary.json", summary)
    console().print(
        f"baseline {backbone}: val top-1 {100 * summary['val_top1']:.2f} %, "
        f"top-5 {100 * summary['val_top5']:.2f} % over {n} images, no training ({source}) -> {run_dir}"
    )
    return run_dir
