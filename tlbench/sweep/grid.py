"""The grid of a sweep: its cells, each cell's config, and the checks made before anything runs.

A cell is one (backbone, recipe, freeze depth, seed) of the grid, or a backbone's zero-training
baseline. Its config is built here from the run options every cell shares (a plain dict of
`tlbench.config.run.run_config` keyword arguments); a bad one marks the cell invalid before
anything runs. Nothing here starts a process: that is `tlbench.sweep.runner`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from tlbench._util import safe_name
from tlbench.config import RECIPE_OVERRIDES, RunConfig, run_config
from tlbench.errors import TlbenchError, UsageError
from tlbench.rundir import BaselineConfig

SET_BY_THE_GRID = ("backbone", "recipe", "freeze", "seed", "out", "trial")
"""Run config fields each cell sets itself; the shared run options may not."""

BASELINE_OPTIONS = ("data", "data_format", "split_seed", "skip_corrupt", "device")
"""Run options that the baseline cells share with the training cells."""


def run_option_names() -> tuple[str, ...]:
    """The `run_config` keyword arguments a sweep passes on to every cell."""
    return (*RECIPE_OVERRIDES, *(f.name for f in fields(RunConfig) if f.name not in SET_BY_THE_GRID))


@dataclass(frozen=True)
class Cell:
    id: str
    kind: str  # run | baseline
    backbone: str
    recipe: str | None = None
    freeze: str | None = None
    seed: int | None = None

    def config(self, run_options: dict[str, Any], out: Path) -> dict[str, Any]:
        """The cell file's `kind` and `config`; a run cell's `resume` is added when the cell starts.

        Raises:
            TlbenchError: The cell's config is not valid (e.g. a value out of its bounds).
        """
        if self.kind == "baseline":
            shared = {k: v for k, v in run_options.items() if k in BASELINE_OPTIONS}
            config = BaselineConfig(self.backbone, out=str(out), **shared)
            return {"kind": "baseline", "config": asdict(config)}
        cfg = run_config(
            self.backbone, str(self.recipe), freeze=self.freeze, seed=self.seed, out=out, **run_options
        )
        return {"kind": "run", "config": cfg.to_dict()}


T = TypeVar("T")


def drop_duplicates(values: list[T]) -> tuple[list[T], list[T]]:
    """(the values without repeats, in first-seen order; the values that were repeated).

    `[0, 1, 0]` -> `([0, 1], [0])`. A value listed twice would otherwise be two runs of one cell.
    """
    return list(dict.fromkeys(values)), [v for v, n in Counter(values).items() if n > 1]


def expand_grid(
    backbones: list[str], freezes: list[str], recipes: list[str], seeds: list[int], baselines: bool
) -> list[Cell]:
    """The cells of the grid (lists without repeats: `drop_duplicates`), baselines last.

    Raises:
        UsageError: Two different values give one cell id (such as `a/b` and `a_b`, both `a_b`).
    """
    cells = [
        Cell(f"{safe_name(b)}-{safe_name(r)}-f{safe_name(f)}-s{s}", "run", b, r, f, s)
        for b in backbones
        for r in recipes
        for f in freezes
        for s in seeds
    ]
    if baselines:
        cells += [Cell(f"{safe_name(b)}-baseline", "baseline", b) for b in backbones]
    clash = [cid for cid, n in Counter(c.id for c in cells).items() if n > 1]
    if clash:
        raise UsageError(
            f"two values of the grid give the same cell {clash[0]} (a cell id keeps letters, digits, ._-)",
            "list each backbone, freeze depth and recipe once",
        )
    return cells


def check_cells(cells: list[Cell], pretrained: bool, weights: str | None) -> dict[str, str]:
    """Problems known before running anything: unknown backbones, freeze depths out of range."""
    from tlbench.models import backbone_layers, parse_freeze
    from tlbench.models.weights import pretrained_source

    problems: dict[str, str] = {}
    layers: dict[str, Any] = {}
    for cell in cells:
        try:
            if cell.backbone not in layers:
                layers[cell.backbone] = backbone_layers(cell.backbone)
            if cell.kind == "baseline":
                if not pretrained or weights is not None:
                    problems[cell.id] = (
                        "no baseline without the backbone's own pretrained ImageNet-1k weights"
                    )
                else:
                    pretrained_source(cell.backbone)
            else:
                parse_freeze(str(cell.freeze), layers[cell.backbone], backbone=cell.backbone)
        except TlbenchError as exc:
            problems[cell.id] = exc.one_line()
    return problems


def cell_dir(folder: Path, cell: Cell) -> Path:
    """The run directory of a cell: `<sweep>/cells/<id>/`."""
    return folder / "cells" / cell.id


def check_shared(run_options: dict[str, Any], backbones: list[str], folder: Path) -> None:
    """What every cell needs, checked before the first one starts, with `tlbench run`'s own checks:
    the data readable, each backbone's pretrained weights reachable (unless `--no-pretrained` or
    `--weights`), the sweep folder writable. A fault here would fail every cell alike.

    Raises:
        DataError: No data set at `--data` (or the default location), or not a layout tlbench reads.
        WeightsError: A backbone's pretrained weights cannot be had.
        OutputError: The sweep folder cannot be written.
    """
    from tlbench._io import check_writable
    from tlbench.data.dataset import resolve_data
    from tlbench.data.formats import detect_format

    root = resolve_data(run_options.get("data"), progress=False).expanduser().resolve()
    if run_options.get("data_format") is None or not root.is_dir():
        detect_format(root)
    if run_options.get("pretrained", True) and run_options.get("weights") is None:
        from tlbench.models.weights import check_weights_reachable

        for backbone in backbones:
            check_weights_reachable(backbone)
    check_writable(folder)
