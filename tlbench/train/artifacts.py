"""What a run directory shows besides numbers: the architecture layer by layer, and the two curve
plots the original recipe drew (train against validation accuracy and loss per epoch)."""

from __future__ import annotations

from typing import Any

import torch

from tlbench.rundir import ACC_PLOT, LOSS_PLOT, EpochMetrics, RunDir


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
    # a TransferModel's counts (torch types any module attribute as Tensor | Module)
    counts = model.param_counts() if hasattr(model, "param_counts") else {}  # type: ignore[operator]
    return {"input_shape": [1, 3, image_size, image_size], "layers": rows, "params": counts}


def curves(run_dir: RunDir, history: list[EpochMetrics], title: str) -> None:
    """train_validation_acc.png and train_validation_loss.png: train against validation per epoch
    (and the selection split, where the run has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    for fname, train_key, val_key, ylabel, scale in (
        (ACC_PLOT, "train_top1", "val_top1", "top-1 accuracy (%)", 100.0),
        (LOSS_PLOT, "train_loss", "val_loss", "cross-entropy loss", 1.0),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        ax.plot(epochs, [getattr(r, train_key) * scale for r in history], marker="o", ms=3, label="train")
        ax.plot(epochs, [getattr(r, val_key) * scale for r in history], marker="o", ms=3, label="validation")
        select_key = val_key.replace("val_", "select_")
        if history and all(getattr(r, select_key) is not None for r in history):
            values = [getattr(r, select_key) * scale for r in history]
            ax.plot(epochs, values, marker="o", ms=3, ls="--", label="selection (picks the best epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        run_dir.write_figure(fname, fig)
        plt.close(fig)
