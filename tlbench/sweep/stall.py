"""A running cell that stops advancing is named, once: which cell, since when, and its process state.

A cell advances when its log or its `metrics.csv` is written (at least once an epoch). One with no
such write for `stall_seconds()` (30 min by default, `TLBENCH_STALL_S`) is reported by the sweep,
with whether its process is stopped (`kill -STOP`, a debugger) as Linux's `/proc/<pid>/stat` says;
the sweep goes on waiting, since a slow epoch is not a fault. A cell is named again only after it has
advanced and stalled anew.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from tlbench.errors import ConfigError

DEFAULT_STALL_S = 1800.0
"""Seconds without progress after which a running cell is named (`TLBENCH_STALL_S`)."""


def stall_seconds() -> float:
    """`TLBENCH_STALL_S`, or the default.

    Raises:
        ConfigError: Not a positive number (named as the environment variable).
    """
    text = os.environ.get("TLBENCH_STALL_S", "").strip()
    if not text:
        return DEFAULT_STALL_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError("TLBENCH_STALL_S", f"{text!r} is not a positive number of seconds", "e.g. 1800")
    return value


def process_state(pid: int) -> str:
    """`stopped`, `running` (or sleeping), `gone`, or `unknown` off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    except OSError:
        return "unknown"
    state = stat.rsplit(")", 1)[-1].split()[0]  # the field after the command name in parentheses
    return "stopped" if state in ("T", "t") else "gone" if state in ("Z", "X") else "running"


class StallWatch:
    """Names each running cell that made no progress for `limit` seconds, once per stall."""

    def __init__(self, limit: float | None = None) -> None:
        self.limit = stall_seconds() if limit is None else limit
        self._named: dict[str, float] = {}  # cell id -> the progress time it was named at

    def check(self, cell_id: str, pid: int, started: float, paths: list[Path]) -> str | None:
        """A one-line note if the cell has stalled and was not named for this stall yet, else None."""
        progress = max([started, *(p.stat().st_mtime for p in paths if p.exists())])
        idle = time.time() - progress
        if idle < self.limit:
            self._named.pop(cell_id, None)  # advancing (again)
            return None
        if self._named.get(cell_id) == progress:
            return None
        self._named[cell_id] = progress
        since = datetime.fromtimestamp(progress).strftime("%H:%M:%S")
        for_how_long = f"{idle:.0f} s" if idle < 120 else f"{idle / 60:.0f} min"
        return (
            f"{cell_id} has not advanced since {since} ({for_how_long}; its process {pid} is "
            f"{process_state(pid)}); the sweep keeps waiting: `kill -CONT {pid}` resumes a stopped one"
        )

    def stalled(self, cell_id: str) -> bool:
        """The cell was named and has not advanced since."""
        return cell_id in self._named
