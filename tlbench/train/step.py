"""One training step, the one `tlbench run`, `tlbench bench`, the demo and the benchmarks execute.

    loss = cross_entropy(logits.float(), y, label_smoothing) + head_l2 * sum(fc1.weight ** 2)
    zero_grad -> (scaled) backward -> optimizer step -> scheduler step (per step)

The L2 term is the reference recipe's Keras `kernel_regularizer=l2(1e-4)` on the Dense(512) kernel,
added to the loss as Keras does (not as weight decay). The logits go to float32 before the loss, so
bf16/fp16 autocast changes the matmuls, not the softmax. Loss and accuracy are summed on the device
(no sync per step); `totals()` reads them once per epoch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlbench import runtime
from tlbench._util import first_line
from tlbench.config import Recipe
from tlbench.errors import UsageError


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over the trainable parameters.

    SGD as Keras' (`momentum`, optional Nesterov, coupled weight decay); AdamW with decoupled
    weight decay on weights (ndim >= 2) only, none on biases and norms, as timm does.

    Raises:
        UsageError: Every parameter is frozen.
    """
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


def lr_factor(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier per optimizer step: linear warm-up, then constant or cosine to 0.

    Step `s` of a warm-up of `w` steps runs at `(s + 1) / w` of the rate (the first step already
    learns); the cosine then falls from 1 to 0 over the remaining steps of `recipe.epochs`. This is
    not timm's `CosineLRScheduler`, whose warm-up starts from a separate `warmup_lr_init` and
    gives other numbers; keeping this rule keeps earlier results comparable.
    """
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


class CompileFallback(nn.Module):
    """`torch.compile(model)` that falls back to eager, with a warning, when compiling fails.

    torch.compile is lazy: most failures (no compiler, an unsupported op) surface at the first call,
    so that call is guarded; `fall_back` switches for good (the benchmark calls it when a compiled
    backward fails during warm-up). An error after a successful first call is a real error.

    Attributes:
        model: The eager model.
        compiled: Calls go through the compiled model (False after a fallback).
        compile_error: Why compiling failed (one line), or None.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.compiled = True
        self.compile_error: str | None = None
        self._tried = False
        self._compiled_fn: Any = None
        try:
            self._compiled_fn = torch.compile(model)
        except Exception as exc:  # compile support varies by platform
            self.fall_back(exc)

    def fall_back(self, exc: BaseException) -> None:
        """Run eagerly from now on and say why."""
        self.compiled = False
        self.compile_error = first_line(exc)
        warnings.warn(f"--compile: cannot compile ({self.compile_error}); running eagerly", stacklevel=3)
        with suppress(Exception):  # best effort: never mask the fallback itself
            torch._dynamo.reset()

    def forward(self, x: Tensor) -> Tensor:
        if not self.compiled:
            return self.model(x)
        if self._tried:
            return self._compiled_fn(x)
        try:
            out = self._compiled_fn(x)
        except Exception as exc:
            self.fall_back(exc)
            return self.model(x)
        self._tried = True
        return out


class TrainStep:
    """Model, loss, optimizer, scheduler, scaler and autocast: one call trains on one batch.

    Args:
        model: The `TransferModel` (its parameters are optimised; its `l2_penalty()` joins the loss).
        recipe: Optimizer, schedule, label smoothing.
        device: Where the batches are.
        amp_dtype: Autocast dtype, or None for fp32. fp16 gets a GradScaler.
        steps_per_epoch: Sizes the schedule (cosine and warm-up are per step).
        compile: Run the forward through `CompileFallback`.
        forward: What maps a batch to logits, if not `model` itself (the head, when the batches are
            cached backbone features).

    Attributes:
        forward: The module called on each batch.
        loss_sum, correct, seen: This epoch's sums (on the device; `seen` on the host).
    """

    def __init__(
        self,
        model: Any,
        recipe: Recipe,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        steps_per_epoch: int,
        *,
        compile: bool = False,
        forward: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.amp_dtype = amp_dtype
        self.label_smoothing = recipe.label_smoothing
        module = forward if forward is not None else model
        self.forward: nn.Module = CompileFallback(module) if compile else module
        self.optimizer = make_optimizer(model, recipe)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(recipe, steps_per_epoch))
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.reset_totals()

    def __call__(self, x: Tensor, y: Tensor, weight: float = 1.0) -> Tensor:
        """Train on one batch; returns the (detached) loss.

        `weight` scales the loss that is backpropagated (not the one returned): under data-parallel
        training a rank's share of an uneven last batch weighs what its images weigh in the whole
        batch (`tlbench.data.loader.shard`).
        """
        with runtime.autocast(self.device, self.amp_dtype):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        loss = loss + self.model.l2_penalty()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        loss = loss.detach()
        self.loss_sum += loss * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)
        return loss

    def reset_totals(self) -> None:
        """Zero the epoch's loss and accuracy sums."""
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.seen = 0

    def totals(self) -> tuple[float, float]:
        """Mean training loss and top-1 since `reset_totals` (one device sync)."""
        n = max(1, self.seen)
        return float(self.loss_sum) / n, float(self.correct) / n

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def compiled(self) -> bool | None:
        """Whether the forward runs compiled (None: compile was not asked for)."""
        return self.forward.compiled if isinstance(self.forward, CompileFallback) else None

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler and scaler state, for a checkpoint (the model is saved apart)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
