"""The live view of a running sweep: a rich table of its cells in a terminal, a line per change otherwise.

Paths, cell ids and errors are shown as plain text, never read as rich markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlbench._console import console, plain, say
from tlbench.rundir import RunDir, SchemaError

if TYPE_CHECKING:
    from tlbench.sweep.runner import Sweep


def progress_of(run_dir: Path) -> tuple[int, float | None, float | None]:
    """(epochs done, last val top-1, mean epoch seconds) from a running cell's metrics.csv."""
    try:
        rows = RunDir(run_dir).read_metrics()
    except SchemaError:  # being written by another version, or damaged: no progress to show
        return 0, None, None
    if not rows:
        return 0, None, None
    secs = [r.epoch_seconds for r in rows]
    return len(rows), rows[-1].val_top1, sum(secs) / len(secs)


class Display:
    """A live rich table of the cells in a terminal; a line per state change otherwise."""

    def __init__(self, sweep: Sweep, live: bool) -> None:
        self.sweep = sweep
        self.live = live and console().is_terminal
        self._live: Any = None
        self._seen: dict[str, str] = {}

    def __enter__(self) -> Display:
        if self.live:
            from rich.live import Live

            self._live = Live(self.table(), console=console(), refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(*exc)
        else:
            self._lines()

    def show(self) -> None:
        """The cells once: the table in a terminal, a line each otherwise (`tlbench sweep --status`)."""
        if console().is_terminal:
            console().print(self.table())
        else:
            self._lines()

    def update(self) -> None:
        if self._live is not None:
            self._live.update(self.table())
        else:
            self._lines()

    def _lines(self) -> None:
        for cell in self.sweep.cells:
            st = self.sweep.states[cell.id]
            if self._seen.get(cell.id) != st.status:
                self._seen[cell.id] = st.status
                why = st.error or st.note
                say(f"sweep: {cell.id} {st.status}" + (f": {why}" if why else ""), soft_wrap=True)

    def table(self) -> Any:
        """The cells as a rich table: state, epochs done, last val top-1, ETA, and a note (the job)."""
        from rich.table import Table

        table = Table(title=plain(f"sweep {self.sweep.folder}"), title_justify="left")
        for col in ("cell", "state", "epoch", "val top-1", "ETA", "note"):
            table.add_column(col)
        for cell in self.sweep.cells:
            st = self.sweep.states[cell.id]
            epoch = top1 = eta = ""
            if cell.kind == "run":
                done, acc, mean = progress_of(self.sweep.cell_dir(cell))
                epoch = f"{done}/{self.sweep.epochs}" if done or st.status == "running" else ""
                top1 = f"{100 * acc:.2f} %" if acc is not None else ""
                if st.status == "running" and mean:
                    eta = f"{mean * max(0, self.sweep.epochs - done):.0f} s"
            color = {
                "finished": "green",
                "stopped early": "cyan",
                "failed": "red",
                "invalid": "yellow",
                "running": "cyan",
                "queued": "blue",
            }.get(st.status, "")
            state = f"[{color}]{st.status}[/]" if color else st.status
            table.add_row(plain(cell.id), state, epoch, top1, eta, plain((st.error or st.note or "")[:80]))
        return table
