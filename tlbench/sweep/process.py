"""How a sweep cell's process starts: the worker command it runs, whether a local sweep forks it
from a zygote, and the parent-death signal that stops it when the sweep dies.

Shared by the local runner (`runner`) and what a cluster job runs (`cell_job`); it needs only the
standard library and the zygote's prctl helpers.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from tlbench.sweep.zygote import die_with_parent, libc_prctl


def worker_command(cell_file: Path) -> list[str]:
    """The process that runs one cell from its config file."""
    return [sys.executable, "-m", "tlbench.train.worker", str(cell_file)]


def fork_cells() -> bool:
    """Whether a local sweep forks its cells from a zygote (`TLBENCH_SWEEP_FORK`, on unless `0`)."""
    return os.environ.get("TLBENCH_SWEEP_FORK", "1") != "0"


def stop_with(sweep_pid: int, ignore: tuple[signal.Signals, ...] = ()) -> Any:
    """A `preexec_fn` that has the cell's process sent SIGTERM when the sweep's process ends.

    The kernel sends it however the sweep ends (`kill -9` included); the cell then stops at its
    next batch with a resumable checkpoint. A no-op where prctl is missing. (Linux sends it when the
    thread that started the cell ends: here, the one that waits for every cell.) The cell's process
    and its children ignore the signals in `ignore` (an ignored signal stays ignored across exec).
    """
    libc_prctl()  # looked up before the fork

    def preexec() -> None:
        die_with_parent(sweep_pid, ignore)

    return preexec
