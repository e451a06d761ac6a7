"""Validation: loss, top-1/top-5 (timm's `accuracy`), per-class accuracy and inference speed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.utils import accuracy
from torch import Tensor

from tlbench import runtime
from tlbench.rundir import ClassRow, Prediction


def correct_at_k(logits: Tensor, y: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have their label among the top k logits, for each k (k past the classes: all).

    Counts from timm's `accuracy`, which gives percentages of the batch.
    """
    return [round(float(pct) * len(y) / 100) for pct in accuracy(logits, y, topk=ks)]


@dataclass(frozen=True)
class Evaluation:
    """One pass over a validation split. Accuracies are fractions; the loss is plain cross-entropy."""

    loss_sum: float
    correct1: int
    correct5: int
    per_class_correct: list[int]
    per_class_total: list[int]
    seconds: float
    images: int
    labels: list[int]
    predicted: list[int]

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.images)

    @property
    def top1(self) -> float:
        return self.correct1 / max(1, self.images)

    @property
    def top5(self) -> float:
        return self.correct5 / max(1, self.images)

    @property
    def images_per_sec(self) -> float | None:
        return self.images / self.seconds if self.seconds else None

    def prediction_rows(self) -> list[Prediction]:
        """predictions.csv's rows: each validation image's label and top-1 class, in split order."""
        return [Prediction(i, y, p) for i, (y, p) in enumerate(zip(self.labels, self.predicted, strict=True))]

    def class_rows(self, classes: list[str], imagenet1k_indices: list[int] | None = None) -> list[ClassRow]:
        """per_class.csv's rows: each class's correct, total and top-1 (None for an empty class)."""
        return [
            ClassRow(
                class_index=i,
                wnid=wnid,
                correct=self.per_class_correct[i],
                total=self.per_class_total[i],
                top1=self.per_class_correct[i] / self.per_class_total[i] if self.per_class_total[i] else None,
                imagenet1k_index=imagenet1k_indices[i] if imagenet1k_indices is not None else None,
            )
            for i, wnid in enumerate(classes)
        ]


@torch.no_grad()
def evaluate(
    forward: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    transform: Callable[[Tensor], Tensor],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    num_classes: int,
) -> Evaluation:
    """Evaluate `forward` (a module in eval mode, or any function of a batch) over `batches`.

    Timed from the first batch to the last result, synchronised: `images / seconds` is the
    inference speed of the whole pipeline (loader, transform, forward).
    """
    if isinstance(forward, torch.nn.Module):
        forward.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    per_class_correct = torch.zeros(num_classes, dtype=torch.long)
    per_class_total = torch.zeros(num_classes, dtype=torch.long)
    labels: list[torch.Tensor] = []
    predicted: list[torch.Tensor] = []
    runtime.sync(device)
    start = time.perf_counter()
    for x, y in batches:
        x = transform(x)
        with runtime.autocast(device, amp_dtype):
            logits = forward(x)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(1)
        # top-1 from the same argmax as predictions.csv and per_class.csv: with bf16 logits exact ties
        # are common, and top-k may break a tie the other way.
        top1 += int((pred == y).sum())
        top5, n = top5 + correct_at_k(logits, y, (5,))[0], n + len(y)
        labels.append(y.cpu())
        predicted.append(pred.cpu())
        per_class_total += torch.bincount(y.cpu(), minlength=num_classes)
        per_class_correct += torch.bincount(y[pred == y].cpu(), minlength=num_classes)
    runtime.sync(device)
    seconds = time.perf_counter() - start
    return Evaluation(
        loss_sum=loss_sum,
        correct1=top1,
        correct5=top5,
        per_class_correct=per_class_correct.tolist(),
        per_class_total=per_class_total.tolist(),
        seconds=seconds,
        images=n,
        labels=torch.cat(labels).tolist() if labels else [],
        predicted=torch.cat(predicted).tolist() if predicted else [],
    )


def combine(ev: Evaluation, group: Any, device: torch.device) -> Evaluation:
    """Every rank's evaluation of its share, as one: counts and the loss summed in float64, the
    slowest rank's time, predictions in split order (the shares are contiguous, in rank order)."""
    if not group.enabled:
        return ev
    k = len(ev.per_class_correct)
    sums = group.sum(
        [ev.loss_sum, ev.correct1, ev.correct5, ev.images, *ev.per_class_correct, *ev.per_class_total], device
    )
    return Evaluation(
        loss_sum=sums[0],
        correct1=int(sums[1]),
        correct5=int(sums[2]),
        images=int(sums[3]),
        per_class_correct=[int(v) for v in sums[4 : 4 + k]],
        per_class_total=[int(v) for v in sums[4 + k :]],
        seconds=group.max(ev.seconds, device),
        labels=group.gather(ev.labels),
        predicted=group.gather(ev.predicted),
    )
