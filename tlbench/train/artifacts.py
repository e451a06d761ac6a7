"""The files of a run directory besides metrics and checkpoints: structure, per-class accuracy,
the two curve plots (named as the original recipe named them), and the live progress display."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from tlbench._console import console
from tlbench._io import write_text, write_with


def structure(model: torch.nn.Module, image_size: int, device: torch.device) -> dict[str, Any]:
    """The architecture layer by layer: type, output shape, parameters, trainable (one forward, batch 1)."""
    rows: list[dict[str, Any]] = []
    hooks = []

    def hook(name: str):
        def fn(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            shape = list(output.shape) if isinstance(output, torch.Tensor) else None
            params = sum(p.numel() for p in module.parameters(recurse=False))
            trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
            rows.append(
                {
                    "name": name,
                    "type": type(module).__name__,
                    "output_shape": shape,
                    "params": params,
                    "trainable": params > 0 and trainable == params,
                }
            )

        return fn

    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    counts = model.param_counts() if hasattr(model, "param_counts") else {}
    return {"input_shape": [1, 3, image_size, image_size], "layers": rows, "params": counts}


def per_class_csv(path: Path, classes: list[str], ev: dict[str, Any]) -> None:
    correct, total = ev["per_class_correct"].tolist(), ev["per_class_total"].tolist()
    lines = ["class_index,wnid,correct,total,top1"]
    for i, wnid in enumerate(classes):
        acc = correct[i] / total[i] if total[i] else float("nan")
        lines.append(f"{i},{wnid},{correct[i]},{total[i]},{acc:.6g}")
    write_text(path, "\n".join(lines) + "\n")


def curves(run_dir: Path, history: list[dict[str, Any]], title: str) -> None:
    """train_validation_acc.png and train_validation_loss.png: train against validation per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    for fname, train_key, val_key, ylabel in (
        ("train_validation_acc.png", "train_top1", "val_top1", "top-1 accuracy (%)"),
        ("train_validation_loss.png", "train_loss", "val_loss", "cross-entropy loss"),
    ):
        scale = 100.0 if "acc" in fname else 1.0
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        ax.plot(epochs, [r[train_key] * scale for r in history], marker="o", ms=3, label="train")
        ax.plot(epochs, [r[val_key] * scale for r in history], marker="o", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        write_with(run_dir / fname, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)


class Ticker:
    """Live progress: a rich display in a terminal, plain lines per epoch otherwise."""

    def __init__(self, enabled: bool, epochs: int, batches: int) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.batches = batches
        self.console = console()
        self.live = enabled and self.console.is_terminal
        self._progress: Any = None
        self._last = 0.0

    def __enter__(self) -> Ticker:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
            )
            self._progress.__enter__()
            self._epoch_task = self._progress.add_task("epochs", total=self.epochs, info="")
            self._batch_task = self._progress.add_task("batches", total=self.batches, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.remove_task(self._batch_task)  # an emptied batch bar says nothing at the end
            self._progress.__exit__(*exc)

    def batch_done(
        self, step: int, epoch: int, loss: torch.Tensor, correct: torch.Tensor | None = None, seen: int = 0
    ) -> None:
        """Live loss and running train top-1 of the epoch (read twice a second: reading syncs the device)."""
        if self._progress is None:
            return
        now = time.perf_counter()
        if now - self._last < 0.5 and step != self.batches:
            return
        self._last = now
        info = f"loss {float(loss):.4f}"
        if correct is not None and seen:
            info += f"  train top-1 {100 * float(correct) / seen:.1f}%"
        self._progress.update(self._batch_task, completed=step, description=f"epoch {epoch}", info=info)

    def epoch_done(self, row: dict[str, Any]) -> None:
        line = (
            f"epoch {row['epoch']}/{self.epochs}  train loss {row['train_loss']:.4f} top-1 "
            f"{100 * row['train_top1']:.2f}%  val loss {row['val_loss']:.4f} "
            f"top-1 {100 * row['val_top1']:.2f}% "
            f"top-5 {100 * row['val_top5']:.2f}%  {row['train_images_per_sec']:.0f} img/s  "
            f"{row['epoch_seconds']:.1f}s"
        )
        if self._progress is not None:
            self._progress.update(
                self._epoch_task, completed=row["epoch"], info=f"val top-1 {100 * row['val_top1']:.2f}%"
            )
            self._progress.reset(self._batch_task, total=self.batches)
            self._progress.console.print(line)
        elif self.enabled:
            self.console.print(line, highlight=False, soft_wrap=True)
