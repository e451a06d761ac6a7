"""Races (`tlbench sweep --race`): stop a cell that is clearly behind, on the selection split.

The sweep's scheduler calls `Race.check` as it polls its cells. Every training cell with at least
`--race-after` epochs is in the race with its latest epoch: its selection top-1 (metrics.csv) and
its prediction for each selection image (`select_predictions.csv`). The leader is the cell with the
highest selection top-1, running or finished. A running cell below it is compared with it image by
image (the same selection images: same size and labels, else the two are not compared): with b the
images only the leader gets right and c those only the cell gets right, the one-sided exact
McNemar test gives p = P(X >= b), X ~ Binomial(b + c, 1/2). Below `--race-p`, the cell is asked to
stop (`RunDir.request_stop`): it stops at its next batch, back to its last whole epoch, with status
`stopped_early` and a reason such as `behind keras-vgg19/vgg19 f11 by 12.5 pts, p=0.003 at epoch 4`;
the sweep records the cell as `stopped early`. The scheduler checks after each epoch, so a cell
stops within one epoch of falling behind. No decision ever looks at the validation images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tlbench.config.tuning import RaceOptions
from tlbench.report.stats import mcnemar_behind
from tlbench.rundir import RunDir, SchemaError
from tlbench.sweep.grid import Cell

_EVERY_S = 1.0
"""How often the race looks at the cells' files (seconds)."""


@dataclass(frozen=True)
class Runner:
    """A cell in the race: its latest epoch, its selection top-1 there, its predictions."""

    cell: Cell
    epoch: int
    top1: float
    labels: tuple[int, ...]
    predicted: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.cell.recipe}/{self.cell.backbone} f{self.cell.freeze}"


def runner(cell: Cell, run_dir: RunDir) -> Runner | None:
    """The cell's latest epoch as a `Runner`, or None before its first epoch (or mid-write)."""
    try:
        rows = run_dir.read_metrics()
        predictions = run_dir.read_select_predictions()
    except SchemaError:
        return None
    if not rows or rows[-1].select_top1 is None or len(predictions) == 0:
        return None
    labels = tuple(p.label for p in predictions)
    predicted = tuple(p.predicted for p in predictions)
    top1 = sum(a == b for a, b in zip(labels, predicted, strict=True)) / len(labels)
    if abs(top1 - rows[-1].select_top1) > 1e-9:  # the two files of different epochs: next time
        return None
    return Runner(cell, rows[-1].epoch, top1, labels, predicted)


def behind(leader: Runner, other: Runner, p_max: float) -> str | None:
    """Why `other` is significantly behind `leader` on the same selection images, or None."""
    if other.top1 >= leader.top1 or other.labels != leader.labels:
        return None
    truth = other.labels
    b = sum(lp == y != op for lp, op, y in zip(leader.predicted, other.predicted, truth, strict=True))
    c = sum(op == y != lp for lp, op, y in zip(leader.predicted, other.predicted, truth, strict=True))
    p = mcnemar_behind(b, c)
    if p >= p_max:
        return None
    points = 100 * (leader.top1 - other.top1)
    return f"behind {leader.label} by {points:.1f} pts, p={p:.2g} at epoch {other.epoch}"


class Race:
    """The race of one sweep's training cells (see the module docstring)."""

    def __init__(self, options: RaceOptions) -> None:
        self.options = options
        self.stopped: dict[str, str] = {}  # cell id -> why it was asked to stop
        self._last = 0.0

    def check(self, sweep: Any, running: list[Cell]) -> None:
        """Ask every running cell that is significantly behind the leader to stop.

        Args:
            sweep: The `Sweep` (its cells, their run directories and states).
            running: The cells whose processes run now.
        """
        now = time.monotonic()
        if now - self._last < _EVERY_S or not running:
            return
        self._last = now
        ids = {c.id for c in running}
        field: list[Runner] = []
        for cell in sweep.cells:
            state = sweep.states.get(cell.id)
            live = cell.id in ids
            if cell.kind != "run" or cell.id in self.stopped or not (live or state.status == "finished"):
                continue
            r = runner(cell, RunDir(sweep.cell_dir(cell)))
            if r is not None and r.epoch >= self.options.race_after:
                field.append(r)
        if len(field) < 2:
            return
        leader = max(field, key=lambda r: (r.top1, r.epoch))
        for other in field:
            if other.cell.id in ids and other is not leader:
                why = behind(leader, other, self.options.race_p)
                if why is not None:
                    RunDir(sweep.cell_dir(other.cell)).request_stop(why)
                    self.stopped[other.cell.id] = why
                    sweep.states[other.cell.id].note = why
                    sweep.save_state()
