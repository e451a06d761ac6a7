"""Races (`tlbench sweep --race`): stop a cell that is clearly behind, on the selection split.

The sweep's scheduler calls `Race.check` as it polls its cells. The race remembers every epoch it
sees of every training cell, running or finished: its selection top-1 (metrics.csv) and which
selection images it got right (from `select_predictions.csv`, which holds the latest epoch; kept as
one bit per image).

A running cell at epoch k >= `--race-after` is judged against its rivals **at the same budget**:
each other cell that runs or has finished (not stopped, failed or diverged) as it stood at its
latest epoch seen that is not after k. A cell
trained from scratch is never compared with another's 12th epoch after its own first. The leader
is the rival with the highest selection top-1 there. A cell below it is compared with it image by
image (the same selection images: same size and labels, else the two are not compared): with b the
images only the leader gets right and c those only the cell gets right, the one-sided exact
McNemar test gives p = P(X >= b), X ~ Binomial(b + c, 1/2). Below `--race-p`, the cell is asked to
stop (`RunDir.request_stop`): it stops at its next batch, back to its last whole epoch, with status
`stopped_early` and a reason such as `behind keras-vgg19/vgg19 f11 by 12.5 pts, p=0.003 at epoch 4`
(`... (it at epoch 3)` where the leader's epoch seen was earlier); the sweep records the cell as
`stopped early`. The scheduler checks every second, so a cell stops within about one epoch of
falling behind. A cell finished before the sweep was restarted is seen at its last epoch only, so
it is a rival only of cells that have trained as long. No decision ever looks at the validation
images.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlbench.config.tuning import RaceOptions
from tlbench.report.stats import mcnemar_behind
from tlbench.rundir import RunDir, SchemaError
from tlbench.sweep.grid import Cell

_EVERY_S = 1.0
"""How often the race looks at the cells' files (seconds)."""


@dataclass(frozen=True)
class Runner:
    """A cell in the race at one epoch: its selection top-1 there and which images it got right.

    `correct` is one bit per selection image (numpy's packbits: a sweep with 6,000 selection
    images keeps 750 bytes per cell and epoch), and `images` a digest of the selection images'
    labels: two runners are compared only on the same images.
    """

    cell: Cell
    epoch: int
    top1: float
    images: str
    correct: bytes

    @property
    def label(self) -> str:
        return f"{self.cell.recipe}/{self.cell.backbone} f{self.cell.freeze}"

    def right(self) -> np.ndarray:
        return np.unpackbits(np.frombuffer(self.correct, dtype=np.uint8)).astype(bool)


def runner(cell: Cell, run_dir: RunDir) -> Runner | None:
    """The cell's latest epoch as a `Runner`, or None before its first epoch (or mid-write)."""
    try:
        rows = run_dir.read_metrics()
        predictions = run_dir.read_select_predictions()
    except SchemaError:
        return None
    if not rows or rows[-1].select_top1 is None or len(predictions) == 0:
        return None
    labels = np.array([p.label for p in predictions], dtype=np.int64)
    right = labels == np.array([p.predicted for p in predictions], dtype=np.int64)
    top1 = float(right.mean())
    if abs(top1 - rows[-1].select_top1) > 1e-9:  # the two files of different epochs: next time
        return None
    images = hashlib.sha256(labels.tobytes()).hexdigest()[:16]
    return Runner(cell, rows[-1].epoch, top1, images, np.packbits(right).tobytes())


def behind(leader: Runner, other: Runner, p_max: float) -> str | None:
    """Why `other` is significantly behind `leader` on the same selection images, or None."""
    if other.top1 >= leader.top1 or other.images != leader.images:
        return None
    lead, mine = leader.right(), other.right()
    b, c = int((lead & ~mine).sum()), int((mine & ~lead).sum())  # images only one of them got right
    p = mcnemar_behind(b, c)
    if p >= p_max:
        return None
    points = 100 * (leader.top1 - other.top1)
    when = f" (it at epoch {leader.epoch})" if leader.epoch != other.epoch else ""
    return f"behind {leader.label} by {points:.1f} pts, p={p:.2g} at epoch {other.epoch}{when}"


class Race:
    """The race of one sweep's training cells (see the module docstring)."""

    def __init__(self, options: RaceOptions) -> None:
        self.options = options
        self.stopped: dict[str, str] = {}  # cell id -> why it was asked to stop
        self.seen: dict[str, dict[int, Runner]] = {}  # cell id -> epoch -> the cell then
        self._last = 0.0

    def check(self, sweep: Any, running: list[Cell]) -> None:
        """Ask every running cell that is significantly behind its rivals at its own epoch to stop.

        Args:
            sweep: The `Sweep` (its cells, their run directories and states).
            running: The cells whose processes run now.
        """
        now = time.monotonic()
        if now - self._last < _EVERY_S or not running:
            return
        self._last = now
        standing = self._look(sweep, {c.id for c in running})
        for cell in running:
            epochs = self.seen.get(cell.id)
            if not epochs or cell.id in self.stopped or max(epochs) < self.options.race_after:
                continue
            other = epochs[max(epochs)]
            rivals = [r for cid in standing if cid != cell.id and (r := self._at(cid, other.epoch))]
            if not rivals:
                continue
            leader = max(rivals, key=lambda r: (r.top1, r.epoch))
            why = behind(leader, other, self.options.race_p)
            if why is not None:
                RunDir(sweep.cell_dir(cell)).request_stop(why)
                self.stopped[cell.id] = why
                sweep.states[cell.id].note = why
                sweep.save_state()

    def _look(self, sweep: Any, live: set[str]) -> list[str]:
        """Remember the latest epoch of every training cell that runs or has finished; return their
        ids (a cell that failed or diverged since is nobody's yardstick)."""
        standing = []
        for cell in sweep.cells:
            state = sweep.states.get(cell.id)
            finished = state is not None and state.status == "finished"
            if cell.kind != "run" or not (cell.id in live or finished):
                continue
            if finished:  # asked to stop too late, it ran every epoch: a result like any other
                self.stopped.pop(cell.id, None)
            standing.append(cell.id)
            r = runner(cell, RunDir(sweep.cell_dir(cell)))
            if r is not None:
                self.seen.setdefault(cell.id, {})[r.epoch] = r
        return standing

    def _at(self, cell_id: str, epoch: int) -> Runner | None:
        """A rival as it stood at its latest epoch seen that is not after `epoch`; None: none such
        (or the cell was stopped: it is behind, no yardstick)."""
        if cell_id in self.stopped or cell_id not in self.seen:
            return None
        earlier = [e for e in self.seen[cell_id] if e <= epoch]
        return self.seen[cell_id][max(earlier)] if earlier else None
