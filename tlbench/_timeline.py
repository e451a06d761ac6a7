"""Wall-clock milestones of a process, for measuring what a sweep cell costs around its training.

When the environment variable `TLBENCH_TIMELINE` names a file, `mark(event)` appends one JSON line
to it:

    {"event": "first_batch", "t": 1767225600.123456, "pid": 4242}

`t` is `time.time()`, so the lines of several processes (a sweep and its cells) share one clock.
The trainer marks `first_batch` (just before the run's first training batch is stepped) and
`last_batch` (after its last one, synchronised); `benchmarks/test_cell_overhead.py` reads them.
Without the variable `mark` costs one dictionary look-up and writes nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "TLBENCH_TIMELINE"


def mark(event: str) -> None:
    """Append `{"event", "t", "pid"}` to the file `TLBENCH_TIMELINE` names; nothing when unset.

    One `write` on a file opened for appending, so the lines of processes that mark at once never
    interleave.
    """
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """The events a timeline file holds, in the order they were written (none for a missing file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
