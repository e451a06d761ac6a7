"""The linear probe: multinomial logistic regression on frozen features, fitted with L-BFGS in torch.

The objective is the mean cross-entropy plus `l2 / 2 * ||W||^2` (the bias unpenalised): scikit-learn's
`LogisticRegression(C=1 / (l2 * n))` on n images. The L2 strength comes from a log grid, coarse then
fine (Kornblith et al. 2019; CLIP_benchmark): the decades 1e-6 .. 1e2, then quarter-decade steps
within half a decade of the best one. Each value is fitted on the training images without the selection split
(warm-started along the grid, from strong to weak regularisation) and scored on the selection split;
the best (ties: the stronger) is refitted on the whole training split and scored once on validation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

COARSE = tuple(10.0**k for k in range(-6, 3))
"""The coarse grid of L2 strengths: 1e-6, 1e-5, ..., 1e2."""
FINE_STEPS = (-0.5, -0.25, 0.25, 0.5)
"""The fine grid: these decades around the best coarse value (within the coarse range)."""
SEARCH_ITERATIONS = 60
"""L-BFGS iterations per grid value (warm-started, so most converge well before)."""
FINAL_ITERATIONS = 300
LOGIT_FLOOR = 60.0
"""In the fits, a logit more than this below its row's largest is raised to that floor (`floored`)."""


def floored(z: Tensor, floor: float | None = LOGIT_FLOOR) -> Tensor:
    """The logits `z` (classes last), none more than `floor` below its row's largest.

    A softmax fitted to nearly separable features drives the wrong classes' probabilities, and with
    them the gradients, below 1e-38 into subnormal floats, on which x86 arithmetic is many times
    slower (benchmarks/test_eval_speed.py: 19x for one fit at weak L2). A class 60 below the largest
    has a probability under e^-60 (9e-27), beneath float32's resolution beside the largest class's
    (1.2e-7): raising it to the floor leaves the loss as float32 computes it, and its gradient
    (9e-27 instead of less) as good as zero, while every probability and gradient stays normal.
    On every thread, unlike flushing subnormals (`torch.set_flush_denormal`), which is per thread.
    """
    if floor is None:
        return z
    return torch.maximum(z, z.detach().amax(-1, keepdim=True) - floor)


@dataclass
class LogReg:
    """Weights (dim, classes) and bias (classes) of a multinomial logistic regression."""

    weight: Tensor
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x, self.weight)


def fit(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    *,
    init: LogReg | None = None,
    iterations: int = 500,
    floor: float | None = LOGIT_FLOOR,
) -> LogReg:
    """Minimise mean cross-entropy + l2/2 ||W||^2 over (W, b) with L-BFGS (strong Wolfe line search).

    Args:
        x: (n, dim) features on the device the fit runs on.
        y: (n,) int64 labels in [0, num_classes).
        num_classes: Number of classes (columns of W).
        l2: The L2 strength.
        init: Start from these weights (a warm start along the grid).
        iterations: The most L-BFGS iterations.
        floor: The logit floor below each row's largest (`floored`); None: none.
    """
    dim = x.shape[1]
    if init is None:
        w = torch.zeros(dim, num_classes, device=x.device, dtype=x.dtype)
        b = torch.zeros(num_classes, device=x.device, dtype=x.dtype)
    else:
        w, b = init.weight.clone(), init.bias.clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-7, tolerance_change=1e-10,
    )  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        logits = floored(torch.addmm(b, x, w), floor)
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LogReg(w.detach(), b.detach())


def accuracy(model: LogReg, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model.logits(x).argmax(1) == y).float().mean())


def search(
    train: tuple[Tensor, Tensor], select: tuple[Tensor, Tensor], num_classes: int
) -> tuple[float, list[dict[str, float]], LogReg]:
    """The grid search: (best l2, every value tried with its selection top-1, the best's weights)."""
    tried: dict[float, tuple[float, LogReg]] = {}
    model = None
    for l2 in sorted(COARSE, reverse=True):  # strong to weak: each fit starts from the previous one
        model = fit(*train, num_classes, l2, init=model, iterations=SEARCH_ITERATIONS)
        tried[l2] = (accuracy(model, *select), model)
    best = _best(tried)
    centre = float(np.log10(best))
    fine = [10 ** (centre + d) for d in FINE_STEPS if -6 <= centre + d <= 2]
    for l2 in sorted(fine, reverse=True):
        model = fit(*train, num_classes, l2, init=tried[best][1], iterations=SEARCH_ITERATIONS)
        tried[l2] = (accuracy(model, *select), model)
    best = _best(tried)
    grid = [{"l2": l2, "select_top1": tried[l2][0]} for l2 in sorted(tried)]
    return best, grid, tried[best][1]


def _best(tried: dict[float, tuple[float, Any]]) -> float:
    """The value with the highest selection top-1; among ties the strongest regularisation."""
    return max(tried, key=lambda l2: (tried[l2][0], l2))


def linear_probe(
    feats: dict[str, tuple[Tensor, Tensor]], classes: list[str], device: torch.device
) -> dict[str, Any]:
    """The whole protocol on `feats` (`fit`, `select`, `train` = fit + select, `val`: features and
    labels); returns the result record (accuracies as fractions)."""
    start = time.perf_counter()
    on = {k: (x.to(device), y.to(device)) for k, (x, y) in feats.items()}
    best, grid, warm = search(on["fit"], on["select"], len(classes))
    model = fit(*on["train"], len(classes), best, init=warm, iterations=FINAL_ITERATIONS)
    x, y = on["val"]
    with torch.no_grad():
        logits = model.logits(x)
    return {
        "l2": best,
        "sklearn_C": 1 / (best * len(on["train"][1])),
        "grid": grid,
        **scores(logits, y, classes),
        "seconds": round(time.perf_counter() - start, 3),
        "interval": "95 % percentile bootstrap over validation images (2,000 resamples, seed 0)",
    }


def scores(logits: Tensor, y: Tensor, classes: list[str]) -> dict[str, Any]:
    """top-1 with its bootstrap interval, top-5 (top-k for fewer classes), per-class top-1."""
    from tlbench.eval.intervals import bootstrap_interval

    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    correct = (top[:, 0] == y).cpu().numpy()
    in_top = (top == y[:, None]).any(1).cpu().numpy()
    labels = y.cpu().numpy()
    low, high = bootstrap_interval(correct)
    per_class = {
        wnid: float(correct[labels == c].mean()) for c, wnid in enumerate(classes) if (labels == c).any()
    }
    return {
        "top1": float(correct.mean()),
        "top1_low": low,
        "top1_high": high,
        "top5": float(in_top.mean()),
        "images": len(labels),
        "per_class": per_class,
    }
