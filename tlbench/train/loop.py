"""One training run: data, model, the epoch loop, checkpoints, and everything the run directory holds.

The loop is deliberately short. Per epoch: reseed (so a resumed run replays exactly), train over the
packed loader with the batched augmentation, validate, append a metrics row, checkpoint atomically.
The run directory is complete when `summary.json` exists; it is written last.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tlbench._console import console
from tlbench._io import check_writable, write_json, write_with
from tlbench.errors import DataError, DeviceError, Interrupted, OutputError, UsageError
from tlbench.train.config import RunConfig

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "epoch_seconds",
    "train_seconds",
    "data_seconds",
    "train_images_per_sec",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(spec: str) -> torch.device:
    """auto | cpu | cuda | cuda:i -> a device, or DeviceError when CUDA is asked for and absent."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device {spec!r} is not a device", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda but no CUDA device is available", "use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)",
                "pick an index below that",
            )
    elif device.type != "cpu":
        raise UsageError(f"--device {spec!r} is not supported", "use auto, cpu, cuda or cuda:N")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA, off on CPU. fp16 needs CUDA (it needs a GradScaler)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA device", "use --amp bf16 or off on the CPU")
        return torch.float16
    raise UsageError(f"--amp {amp!r} is not one of auto, bf16, fp16, off")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**63 - 1)


@dataclass
class _StopFlag:
    signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        console().print("[yellow]stopping after this batch (Ctrl-C again to stop at once)...[/]")


def lr_lambda(recipe: Any, steps_per_epoch: int) -> Any:
    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = int(recipe.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if recipe.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def make_optimizer(model: torch.nn.Module, recipe: Any) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError("nothing to train: every parameter is frozen")
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
        )
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
    )


def _topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Any,
    transform: Any,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    num_classes: int,
) -> dict[str, Any]:
    """Validation loss (plain cross-entropy), micro top-1/top-5, per-class accuracy, and timing."""
    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    per_class_correct = torch.zeros(num_classes, dtype=torch.long)
    per_class_total = torch.zeros(num_classes, dtype=torch.long)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    _sync(device)
    start = time.perf_counter()
    for x, y in loader:
        x = transform(x)
        with autocast:
            logits = model(x)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(1)
        top1 += int((pred == y).sum())
        top5 += _topk_correct(logits, y, 5)
        n += len(y)
        per_class_total += torch.bincount(y.cpu(), minlength=num_classes)
        per_class_correct += torch.bincount(y[pred == y].cpu(), minlength=num_classes)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "val_loss": loss_sum / max(1, n),
        "val_top1": top1 / max(1, n),
        "val_top5": top5 / max(1, n),
        "per_class_correct": per_class_correct,
        "per_class_total": per_class_total,
        "seconds": seconds,
        "images": n,
    }


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    def writer(tmp: Path) -> None:
        lines = [",".join(METRIC_COLUMNS)]
        for row in rows:
            lines.append(",".join(_fmt(row.get(c)) for c in METRIC_COLUMNS))
        tmp.write_text("\n".join(lines) + "\n")

    write_with(path, writer)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    write_with(path, lambda tmp: torch.save(state, tmp))


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def prepare_out(cfg: RunConfig, resume: Path | None) -> Path:
    """The run directory: new and empty, or the one being resumed. Never overwrites results."""
    if resume is not None:
        if not (resume / "config.json").is_file():
            raise OutputError(
                f"{resume} is not a tlbench run directory (no config.json)", "pass a run folder"
            )
        if (resume / "summary.json").is_file():
            raise OutputError(
                f"{resume} is already finished (summary.json exists)", "start a new run instead"
            )
        if not (resume / "checkpoint.pt").is_file():
            raise OutputError(f"{resume} has no checkpoint.pt to resume from", "start a new run instead")
        return resume
    out = Path(cfg.out) if cfg.out else cfg.default_out()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder", "choose a new folder for the run")
    if out.exists() and any(out.iterdir()):
        hint = (
            f"resume it with: tlbench run --resume {out}"
            if (out / "checkpoint.pt").is_file() and not (out / "summary.json").is_file()
            else "choose another --out"
        )
        raise OutputError(f"{out} already holds files", hint)
    return check_writable(out)


class FeatureBatches:
    """Batches of cached backbone features, in the same seeded order the image loader would use."""

    def __init__(
        self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int = 0
    ) -> None:
        self.features, self.labels = features, labels
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.placement = "cached features"

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        from tlbench.data.loader import epoch_permutation

        n = len(self.labels)
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
        order = order.to(self.features.device)
        for b in range(len(self)):
            pos = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.features.index_select(0, pos), self.labels.index_select(0, pos)


@torch.no_grad()
def extract_features(
    model: Any, loader: Any, transform: Any, amp_dtype: torch.dtype | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's pooled features for a whole split, in the split's order."""
    model.eval()
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    feats, labels = [], []
    for x, y in loader:
        with autocast:
            feats.append(model.forward_features(transform(x)).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def _identity(x: torch.Tensor, generator: Any = None) -> torch.Tensor:
    return x


def train(cfg: RunConfig, resume: Path | None = None, progress: bool = True) -> Path:
    """Run (or resume) one training run; return its directory."""
    from tlbench.data.augment import BatchTransform, KerasAugment
    from tlbench.data.dataset import load_data
    from tlbench.data.loader import BatchLoader
    from tlbench.models import build_model, save_model
    from tlbench.train import artifacts
    from tlbench.train.env import environment

    out = console()
    recipe = cfg.recipe
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, device)
    run_dir = prepare_out(cfg, resume)
    wall_start = time.perf_counter()

    data = load_data(
        cfg.data,
        recipe.image_size,
        recipe.interpolation,
        data_format=cfg.data_format,
        split_seed=cfg.split_seed,
        skip_corrupt=cfg.skip_corrupt,
        progress=progress,
    )
    if resume is not None:
        saved = json.loads((run_dir / "config.json").read_text()).get("data_info", {})
        for key in ("class_list_hash", "counts", "split_rule"):
            if saved.get(key) != data.info.get(key):
                raise DataError(
                    f"the data changed since {run_dir} started "
                    f"({key}: {saved.get(key)} -> {data.info.get(key)})",
                    "resume with the same data, or start a new run",
                )
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.backbone,
        data.num_classes,
        pool=recipe.pool,
        freeze=cfg.freeze,
        pretrained=cfg.pretrained and cfg.weights is None,
        weights=cfg.weights,
        image_size=recipe.image_size,
        hidden=recipe.hidden,
        dropout=recipe.dropout,
    )
    model.l2 = recipe.head_l2
    if not cfg.pretrained and cfg.weights is None:
        out.print(f"[yellow]{cfg.backbone}: training from scratch (random initialisation)[/]")
    mean, std = _normalization(recipe.normalize, model.data_config)
    model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    counts = model.param_counts()

    config = cfg.to_dict() | {
        "data_info": data.info,
        "classes": data.classes,
        "model": model.model_config(),
        "weights_source": model.weights_source,
        "normalization": {"mode": recipe.normalize, "mean": mean, "std": std},
        "device_resolved": str(device),
        "amp_resolved": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "params": counts,
        "freeze_index": model.freeze_index,
    }
    if resume is None:
        write_json(run_dir / "config.json", config)
        write_json(run_dir / "env.json", environment(device))
        write_json(run_dir / "structure.json", artifacts.structure(model, recipe.image_size, device))

    step_model: torch.nn.Module = model
    if cfg.compile:
        step_model = _compile(model)

    place = cfg.data_on_device
    # A last training batch of one image breaks BatchNorm in train mode (one value per channel on
    # small feature maps): drop that single image per epoch (a different one each epoch, shuffled).
    drop_last = len(data.train) % recipe.batch_size == 1
    train_loader = BatchLoader.from_split(
        data.train,
        recipe.batch_size,
        device,
        shuffle=True,
        seed=cfg.seed,
        placement=place,
        drop_last=drop_last,
    )
    val_loader = BatchLoader.from_split(data.val, recipe.batch_size, device, shuffle=False, placement=place)
    augment = KerasAugment() if recipe.augment == "keras" else None
    train_tf = BatchTransform(augment, mean, std, channels_last=cfg.channels_last)
    val_tf = BatchTransform(None, mean, std, channels_last=cfg.channels_last)
    image_val_loader, image_val_tf = val_loader, val_tf

    feature_cache: dict[str, Any] = {"used": False}
    backbone_frozen = not any(p.requires_grad for p in model.backbone.parameters())
    if cfg.feature_cache and backbone_frozen and augment is None:
        # A linear probe without augmentation sees the same features every epoch: compute them once
        # (train split in loader order, unshuffled) and train the head alone on them.
        t0 = time.perf_counter()
        ordered = BatchLoader.from_split(
            data.train, recipe.batch_size, device, shuffle=False, placement=place
        )
        train_x, train_y = extract_features(model, ordered, train_tf, amp_dtype, device)
        del ordered, train_loader  # their copies of the train split are not needed any more
        val_x, val_y = extract_features(model, val_loader, val_tf, amp_dtype, device)
        train_loader = FeatureBatches(train_x, train_y, recipe.batch_size, shuffle=True, seed=cfg.seed)
        val_loader = FeatureBatches(val_x, val_y, recipe.batch_size, shuffle=False)
        train_tf = val_tf = _identity
        step_model = model.head
        feature_cache = {
            "used": True,
            "seconds": round(time.perf_counter() - t0, 3),
            "dim": int(train_x.shape[1]),
        }
        out.print(
            f"linear probe: features cached in {feature_cache['seconds']:.1f} s; training the head alone"
        )

    optimizer = make_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe, len(train_loader)))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # peak memory of training, not of the data upload
    history: list[dict[str, Any]] = []
    start_epoch = 0
    last_eval: dict[str, Any] | None = None

    def checkpoint(epoch: int) -> None:
        _save_checkpoint(
            run_dir / "checkpoint.pt",
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
                "config": cfg.to_dict(),
            },
        )

    if resume is None:
        checkpoint(0)  # so that a run stopped or crashed in its first epoch can be resumed too
    else:
        ckpt = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        history = ckpt["history"]
        start_epoch = ckpt["epoch"]
        out.print(f"resuming {run_dir} after epoch {start_epoch}")

    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    status = "finished"
    ticker = artifacts.Ticker(progress, recipe.epochs, len(train_loader))
    try:
        with ticker:
            for epoch in range(start_epoch, recipe.epochs):
                if cfg.max_time is not None and history:
                    # wall clock since start (data, model, checkpoints included) + one more epoch
                    # + the time the end (plots, model export) took the last epoch's checkpoint
                    mean_epoch = sum(r["epoch_seconds"] for r in history) / len(history)
                    if time.perf_counter() - wall_start + 1.1 * mean_epoch > cfg.max_time:
                        status = "max_time"
                        out.print(f"--max-time {cfg.max_time:.0f}s: stopping after {len(history)} epoch(s)")
                        break
                row = _train_epoch(
                    step_model,
                    model,
                    train_loader,
                    train_tf,
                    optimizer,
                    scheduler,
                    scaler,
                    autocast,
                    device,
                    cfg.seed,
                    epoch,
                    stop,
                    ticker,
                    recipe.label_smoothing,
                )
                if row is None:
                    raise Interrupted(
                        f"stopped during epoch {epoch + 1}; the last checkpoint is after epoch {epoch}",
                        f"resume with: tlbench run --resume {run_dir}",
                    )
                ev = last_eval = evaluate(step_model, val_loader, val_tf, device, amp_dtype, data.num_classes)
                row.update(
                    epoch=epoch + 1,
                    val_loss=ev["val_loss"],
                    val_top1=ev["val_top1"],
                    val_top5=ev["val_top5"],
                    lr=optimizer.param_groups[0]["lr"],
                )
                row["epoch_seconds"] = row["train_seconds"] + ev["seconds"]
                history.append(row)
                _write_metrics(run_dir / "metrics.csv", history)
                checkpoint(epoch + 1)
                ticker.epoch_done(row)
                if stop.signum is not None:
                    raise Interrupted(
                        f"stopped after epoch {epoch + 1} (checkpoint saved)",
                        f"resume with: tlbench run --resume {run_dir}",
                    )
    finally:
        for s, handler in old_handlers.items():
            signal.signal(s, handler)

    if feature_cache["used"] or last_eval is None:
        # the full model on the images: the accuracy the exported model has, and its real inference speed
        final = evaluate(model, image_val_loader, image_val_tf, device, amp_dtype, data.num_classes)
    else:
        final = last_eval  # the model has not changed since the last epoch's validation
    artifacts.per_class_csv(run_dir / "per_class.csv", data.classes, final)
    artifacts.curves(run_dir, history, f"{cfg.backbone} / {recipe.name} / freeze {cfg.freeze}")
    save_model(
        model,
        run_dir / "model",
        extra={
            "classes": data.classes,
            "preprocessing": {
                "image_size": recipe.image_size,
                "interpolation": recipe.interpolation,
                "rescale": 1 / 255,
                "mean": mean,
                "std": std,
                "input": "RGB uint8 NHWC -> float NCHW",
            },
            "recipe": recipe.name,
        },
    )
    best = max(history, key=lambda r: r["val_top1"])
    train_ips = [r["train_images_per_sec"] for r in history]
    summary = {
        "status": status,
        "best_val_top1": best["val_top1"],
        "best_epoch": best["epoch"],
        "final_val_top1": final["val_top1"],
        "final_val_top5": final["val_top5"],
        "final_val_loss": final["val_loss"],
        "epochs": len(history),
        "params_total": counts["total"],
        "params_trainable": counts["trainable"],
        "params_frozen": counts["frozen"],
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "train_images_per_sec": float(np.median(train_ips)),
        "infer_images_per_sec": final["images"] / final["seconds"] if final["seconds"] else None,
        "peak_memory_bytes": _peak_memory(device),
        "device": str(device),
        "amp": config["amp_resolved"],
        "weights_source": model.weights_source,
        "feature_cache": feature_cache,
    }
    write_json(run_dir / "summary.json", summary)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    return run_dir


def _train_epoch(
    step_model: torch.nn.Module,
    model: Any,
    loader: Any,
    transform: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    autocast: Any,
    device: torch.device,
    seed: int,
    epoch: int,
    stop: _StopFlag,
    ticker: Any,
    label_smoothing: float,
) -> dict[str, Any] | None:
    """One pass over the training split; None when stopped by a signal midway."""
    # Reseed everything random from (seed, epoch): the loader order, the augmentation draws and
    # dropout. A run resumed at an epoch boundary then replays the same numbers as one that never stopped.
    torch.manual_seed(_epoch_seed(seed, epoch))
    aug_gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch) + 1)
    loader.set_epoch(epoch)
    step_model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    data_seconds = 0.0
    _sync(device)
    start = time.perf_counter()
    tick = start
    for step, (x, y) in enumerate(loader):
        x = transform(x, aug_gen)
        data_seconds += time.perf_counter() - tick
        with autocast:
            logits = step_model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing) + model.l2_penalty()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        n += len(y)
        ticker.batch_done(step + 1, epoch + 1, loss, correct, n)
        if stop.signum is not None:
            return None
        tick = time.perf_counter()
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "train_loss": float(loss_sum) / max(1, n),
        "train_top1": float(correct) / max(1, n),
        "train_seconds": seconds,
        "data_seconds": data_seconds,
        "train_images_per_sec": n / seconds if seconds else None,
    }


def _normalization(mode: str, data_config: dict[str, Any]) -> tuple[Any, Any]:
    if mode == "rescale":
        return None, None
    if mode == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(data_config["mean"]), tuple(data_config["std"])


class CompiledWithFallback(torch.nn.Module):
    """`torch.compile(model)`, falling back to eager with a warning if compiling fails.

    torch.compile is lazy: most failures (no compiler, an unsupported op) surface at the first
    call, so that call is guarded; an error after a successful first call is a real error.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.compiled: Any = None
        self.state = "untried"  # untried | compiled | eager
        try:
            self.compiled = torch.compile(model)
        except Exception as exc:  # compile support varies by platform
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        import warnings

        first = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"--compile: cannot compile ({type(exc).__name__}: {first}); running eagerly", stacklevel=3
        )
        self.state = "eager"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state == "eager":
            return self.model(x)
        if self.state == "compiled":
            return self.compiled(x)
        try:
            out = self.compiled(x)
        except Exception as exc:
            self._give_up(exc)
            return self.model(x)
        self.state = "compiled"
        return out


def _compile(model: torch.nn.Module) -> torch.nn.Module:
    return CompiledWithFallback(model)
