"""How a sweep cell's state is worked out, the same way for a local process and a cluster job: how
its process ended (exit code, killing signal, the `tlbench: error:` line of its last attempt's log),
and the state of a cell another process holds.

Shared by the local runner (`runner`), the cluster sweep (`cluster`) and what a cluster job runs
(`cell_job`, which writes the same log header), so none of them imports another for it.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tlbench._sweepdir import CellState
from tlbench.errors import EXIT_INTERRUPTED

LOG_HEADER = "--- "
"""The start of the line each start of a cell writes to its log, before the cell's output."""


DAMAGED_CHECKPOINT = "the checkpoint is damaged"
"""What a worker says (`RunDir.load_checkpoint`) when it cannot resume: a rerun would fail again."""


def error_line(log: Path) -> str:
    """Why the cell's last attempt failed: its `tlbench: error:` line, else its last line of output.

    A damaged checkpoint's message says how to start that cell over (its run directory is the
    log's path without `.log`); the worker's own advice, a new run, does not fit a sweep's cell.
    """
    return start_over(_error_line(log), log.with_suffix(""))


def start_over(error: str, run_dir: Path) -> str:
    """`error` with the fix for a cell whose checkpoint is damaged (a rerun leaves it failed)."""
    if DAMAGED_CHECKPOINT not in error:
        return error
    what = error[: error.index(DAMAGED_CHECKPOINT)].rstrip(". ")
    return f"{what}. {DAMAGED_CHECKPOINT}: delete {run_dir} and run the sweep again to start this cell over"


def _error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    starts = [i for i, ln in enumerate(lines) if ln.startswith(LOG_HEADER)]
    lines = lines[starts[-1] + 1 :] if starts else lines  # the last attempt's output only
    for line in reversed(lines):
        if line.startswith("tlbench: error:"):
            return line.removeprefix("tlbench: error:").strip()
    return lines[-1][:300] if lines else "exited without output"


def signal_text(code: int) -> str:
    """'killed by signal 9 (SIGKILL)' for a process's negative return code -9."""
    try:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"killed by signal {-code}"


def end_state(state: CellState, code: int, seconds: float, finished: bool, log: Path) -> None:
    """Record in `state` how the cell's process ended: finished, or failed with why (from `log`)."""
    state.exit_code, state.seconds, state.pid = code, round(seconds, 1), None
    if code == 0 and finished:
        state.status = "finished"
    else:
        state.status = "failed"
        if code < 0:  # no last words from a killed process: its log's last line is not why
            state.error = signal_text(code)
        elif code == EXIT_INTERRUPTED:
            state.error = "interrupted (resumable)"
        else:
            state.error = error_line(log)


def elsewhere(pid: int, attempts: int = 0) -> CellState:
    """The state of a cell whose run directory a live process other than this sweep holds."""
    who = f"pid {pid}" if pid else "pid unknown"
    note = f"in another process ({who}); left alone: run the sweep again once it ends"
    return CellState("running", attempts=attempts, pid=pid or None, note=note)
