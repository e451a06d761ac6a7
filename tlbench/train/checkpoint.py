"""Stopping and resuming: the epoch checkpoint and the signal handler that makes a stop clean.

A checkpoint is written after every epoch (and once before the first, so a run stopped in epoch 1
resumes too); Ctrl-C or SIGTERM lets the current batch finish, and a second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
from dataclasses import asdict
from types import TracebackType
from typing import Any

from tlbench._console import say
from tlbench.errors import Interrupted
from tlbench.rundir import EpochMetrics, RunDir, SchemaError


class StopOnSignal:
    """While entered, SIGINT and SIGTERM stop the run cleanly, at every stage of it.

    Before training starts (`immediate`, the default: data loading, model building), a signal stops
    at once with `Interrupted`: there is nothing to save yet. Once the training loop runs (it sets
    `immediate = False`), a signal sets `requested`, which the loop checks after each batch; a
    second signal raises KeyboardInterrupt at once. The previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.immediate = True
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.immediate:
            raise Interrupted(
                f"stopped by {signal.Signals(signum).name} before training started",
                "nothing was trained; run the same command again",
            )
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        say("stopping after this batch (Ctrl-C again to stop at once)...", style="yellow")

    def __enter__(self) -> StopOnSignal:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def save(
    run_dir: RunDir, epoch: int, model: Any, step: Any, history: list[EpochMetrics], config: dict
) -> None:
    """The state after `epoch` epochs: model, optimizer/scheduler/scaler, metrics so far, config."""
    run_dir.save_checkpoint(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            **step.state_dict(),
            "history": [asdict(row) for row in history],
            "config": config,
        }
    )


def restore(run_dir: RunDir, model: Any, step: Any, device: Any) -> tuple[int, list[EpochMetrics]]:
    """Load the checkpoint into `model` and `step`; return (epochs done, metrics so far).

    Raises:
        SchemaError: The checkpoint is damaged or does not fit this run's model.
    """
    state = run_dir.load_checkpoint(map_location=device)
    try:
        model.load_state_dict(state["model"])
        step.load_state_dict(state)
        history = [EpochMetrics(**row) for row in state["history"]]
        return int(state["epoch"]), history
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise SchemaError(
            f"{run_dir.path} holds a checkpoint that does not fit its run ({type(exc).__name__})",
            "start a new run",
        ) from None
