"""`tlbench baseline`: what zero training already scores.

The pretrained ImageNet-1k classifier, untouched, with its 1000 logits restricted to the data set's
classes (each wnid's ImageNet-1k logit index, from the files timm ships), evaluated on the
validation split. Every classic mini-ImageNet image comes from ImageNet-1k's training set, so this
number is the floor any fine-tuned result should be read against (REFERENCE.md section 3).

The run directory is written through `tlbench.rundir.RunDir`, kind `baseline`: config.json (a
`BaselineConfig` and what it resolved to, with each class's ImageNet-1k index), env.json,
per_class.csv and a `Summary` whose best and final numbers are the one evaluation (0 epochs).
Nothing is trained, so every parameter of the classifier counts as frozen (trainable 0).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tlbench import runtime
from tlbench._console import say
from tlbench._util import first_line, safe_name
from tlbench.errors import DataError, UsageError, WeightsError
from tlbench.options import RUNS_DIR
from tlbench.rundir import BaselineConfig, Resolved, RunDir, RunFile, Summary

if TYPE_CHECKING:
    from tlbench.data.dataset import DataBundle
    from tlbench.train.evaluate import Evaluation


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
            reason = first_line(exc, 120, with_type=False)
            raise WeightsError(
                f"{path} does not hold a full {backbone} classifier ({reason})",
                "the baseline needs the ImageNet-1k head too: pass the complete checkpoint",
            ) from exc
        source = f"file: {path}"
    if getattr(model, "num_classes", None) != 1000:
        raise WeightsError(
            f"{backbone}'s classifier has {getattr(model, 'num_classes', '?')} classes, not 1000",
            "choose an ImageNet-1k checkpoint (a .*in1k tag)",
        )
    return model, source


def run_baseline(backbone: str, data: str | None = None, *, progress: bool = True, **options: Any) -> Path:
    """Evaluate `backbone`'s restricted ImageNet classifier on `data`; see `evaluate_baseline`.

    Args:
        backbone: A timm model with ImageNet-1k weights.
        data: A data folder or `synthetic[...]`; None is the data root.
        progress: Show progress while the data is decoded.
        **options: The other `BaselineConfig` fields: data_format, split_seed, skip_corrupt,
            image_size, batch_size, weights, device, out.

    Raises:
        UsageError: An option that is not a `BaselineConfig` field.
    """
    unknown = sorted(set(options) - {f.name for f in fields(BaselineConfig)} - {"backbone", "data", "rule"})
    if unknown:
        raise UsageError(f"unknown baseline option(s): {', '.join(unknown)}")
    if options.get("out") is not None:
        options["out"] = str(options["out"])
    return evaluate_baseline(BaselineConfig(backbone=backbone, data=data, **options), progress=progress)


def evaluate_baseline(config: BaselineConfig, *, progress: bool = True) -> Path:
    """Evaluate the restricted ImageNet classifier; write a run directory of kind `baseline`.

    Top-1 is the argmax over the data set's classes; top-5 counts a label among the 5 largest of
    those logits (all of them when there are fewer than 5 classes); the loss is cross-entropy over
    them. Returns the run directory (`config.out`, or a new folder under results/runs/).
    """
    start = time.perf_counter()
    dev = runtime.resolve_device(config.device)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rd = RunDir.create(config.out or RUNS_DIR / f"{stamp}-{safe_name(config.backbone)}-baseline")
    try:
        return _evaluate_into(rd, config, dev, start, progress)
    finally:
        rd.release()


def _evaluate_into(
    rd: RunDir, config: BaselineConfig, dev: torch.device, start: float, progress: bool
) -> Path:
    """The evaluation and its files, into the run directory this process has claimed."""
    from tlbench.data.dataset import load_data
    from tlbench.train.env import environment

    model, source = _classifier(config.backbone, config.weights)
    pre = _preprocessing(model, config.image_size)
    bundle = load_data(
        config.data,
        pre.resize,
        pre.interpolation,
        data_format=config.data_format,
        split_seed=config.split_seed,
        skip_corrupt=config.skip_corrupt,
        progress=progress,
    )
    indices = imagenet_indices(bundle.classes)
    ev = _evaluate(model, bundle, indices, pre, config.batch_size, dev)
    params = sum(p.numel() for p in model.parameters())
    resolved = Resolved(
        data_info=bundle.info,
        classes=bundle.classes,
        weights_source=source,
        device=str(dev),
        amp="off",
        params={"total": params, "trainable": 0, "frozen": params},
        preprocessing=pre.as_dict(),
        imagenet1k_indices=indices,
    )
    rd.write_config(RunFile(kind="baseline", config=config, resolved=resolved))
    rd.write_env(environment(dev))
    rd.write_per_class(ev.class_rows(bundle.classes, indices))
    rd.write_predictions(ev.prediction_rows())
    rd.write_summary(_summary(ev, params, source, dev, start))
    say(
        f"baseline {config.backbone}: val top-1 {100 * ev.top1:.2f} %, "
        f"top-5 {100 * ev.top5:.2f} % over {ev.images} images, "
        f"no training ({source}) -> {rd.path}"
    )
    return rd.path


@dataclass(frozen=True)
class _Preprocessing:
    """timm's ImageNet evaluation for this model: resize to size / crop_pct, then a centre crop of size.

    Attributes:
        size: The side of the centre crop the model sees.
        resize: The side the images are decoded at (never below `size`).
        crop_pct: The model's crop fraction (1.0 when it names none).
        interpolation: nearest, bilinear or bicubic (bilinear for any other the model names).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
    """

    size: int
    resize: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def top(self) -> int:
        """Where the centre crop starts, in both directions."""
        return (self.resize - self.size) // 2

    def as_dict(self) -> dict[str, Any]:
        """As config.json's `resolved.preprocessing` records it."""
        return {
            "resize": self.resize,
            "center_crop": self.size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
        }


def _preprocessing(model: torch.nn.Module, image_size: int | None) -> _Preprocessing:
    """The evaluation transform timm's data config gives `model` (`image_size` overrides its size)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=model)
    size = image_size or int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    resize = max(size, math.floor(size / crop_pct))
    interpolation = cfg.get("interpolation", "bilinear")
    interpolation = interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear"
    return _Preprocessing(size, resize, crop_pct, interpolation, tuple(cfg["mean"]), tuple(cfg["std"]))


def _evaluate(
    model: torch.nn.Module,
    bundle: DataBundle,
    indices: list[int],
    pre: _Preprocessing,
    batch_size: int,
    dev: torch.device,
) -> Evaluation:
    """The classifier, its logits restricted to `indices`, over the validation split (peak memory
    counted from here)."""
    from tlbench.data.augment import BatchTransform
    from tlbench.data.loader import BatchLoader
    from tlbench.train.evaluate import evaluate

    model.to(dev).eval()
    transform = BatchTransform(None, pre.mean, pre.std)
    loader = BatchLoader.from_split(bundle.val, batch_size, dev, shuffle=False)
    restrict = torch.tensor(indices, device=dev)
    top, size = pre.top, pre.size

    def crop(x: torch.Tensor) -> torch.Tensor:
        return transform(x[:, top : top + size, top : top + size])

    def restricted(x: torch.Tensor) -> torch.Tensor:
        return model(x)[:, restrict]

    runtime.reset_peak_memory(dev)
    return evaluate(restricted, loader, crop, dev, None, bundle.num_classes)


def _summary(ev: Evaluation, params: int, source: str, dev: torch.device, start: float) -> Summary:
    """The one evaluation as both best and final numbers, 0 epochs, nothing trainable."""
    return Summary(
        kind="baseline",
        status="finished",
        best_val_top1=ev.top1,
        best_epoch=None,
        final_val_top1=ev.top1,
        final_val_top5=ev.top5,
        final_val_loss=ev.loss,
        val_images=ev.images,
        epochs=0,
        params_total=params,
        params_trainable=0,
        params_frozen=params,
        wall_seconds=round(time.perf_counter() - start, 3),
        train_images_per_sec=None,
        infer_images_per_sec=ev.images_per_sec,
        peak_memory_bytes=runtime.peak_memory_bytes(dev) if dev.type == "cuda" else None,
        device=str(dev),
        amp="off",
        weights_source=source,
    )
