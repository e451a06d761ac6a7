"""Live progress of a training run: a rich display in a terminal, one line per epoch otherwise."""

from __future__ import annotations

import time
from typing import Any

import torch

from tlbench._console import console
from tlbench.rundir import EpochMetrics


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
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}", markup=False),
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

    def epoch_done(self, row: EpochMetrics) -> None:
        line = (
            f"epoch {row.epoch}/{self.epochs}  train loss {row.train_loss:.4f} top-1 "
            f"{100 * row.train_top1:.2f}%  val loss {row.val_loss:.4f} "
            f"top-1 {100 * row.val_top1:.2f}% "
            f"top-5 {100 * row.val_top5:.2f}%  "
            + ("" if row.select_top1 is None else f"select top-1 {100 * row.select_top1:.2f}%  ")
            + f"{row.train_images_per_sec or 0:.0f} img/s  "
            f"{row.epoch_seconds:.1f}s"
        )
        if self._progress is not None:
            self._progress.update(
                self._epoch_task, completed=row.epoch, info=f"val top-1 {100 * row.val_top1:.2f}%"
            )
            self._progress.reset(self._batch_task, total=self.batches)
            self._progress.console.print(line, markup=False, highlight=False)
        elif self.enabled:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
