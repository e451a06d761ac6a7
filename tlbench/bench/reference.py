"""The independent reference: a plain PyTorch training step written by hand, as a user would.

`tlbench bench` times it in turns with tlbench's own step (`tlbench.train.step.TrainStep`) on the
same model and input, and reports `train_vs_baseline` = tlbench images/s / plain images/s. It does
the same work (the recipe's loss with the Keras L2 term and label smoothing, backward, an optimizer
of the same kind and settings) but shares no code with the step it is compared against: a slow or
wrong change to TrainStep cannot hide in both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlbench import runtime
from tlbench.config import Recipe


@dataclass
class PlainState:
    """A plain PyTorch loop's objects: the same model, its own optimizer built by hand."""

    runner: Callable[[Tensor], Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    device: torch.device
    amp_dtype: torch.dtype | None
    l2_weight: Tensor
    l2: float
    label_smoothing: float


def plain_train_step(state: PlainState, x: Tensor, y: Tensor) -> None:
    """The hand-written reference step: forward, the same loss, backward, optimizer step."""
    state.optimizer.zero_grad(set_to_none=True)
    with runtime.autocast(state.device, state.amp_dtype):
        logits = state.runner(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=state.label_smoothing)
    loss = loss + state.l2 * state.l2_weight.square().sum()
    if state.scaler is None:
        loss.backward()
        state.optimizer.step()
    else:
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()


def plain_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer written out by hand (one parameter group), for the plain loop."""
    params = [p for p in model.parameters() if p.requires_grad]
    r = recipe
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, r.lr, r.momentum, weight_decay=r.weight_decay, nesterov=r.nesterov)
    return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
