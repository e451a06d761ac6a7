"""`tlbench sweep`: a grid of backbones x freeze depths x recipes x seeds, one process per cell.

    folder, states = run_sweep(["vgg19", "resnet50"], ["none", "all"], ["keras-vgg19"], [0, 1],
                               {"epochs": 5}, out=None, gpus=["0", "1"], baselines=True, dry_run=False)

`command` plans the sweep and prints it (dry run), shows its states (status) or runs it;
`grid` expands the grid into cells, builds and checks each cell's config before anything runs;
`runner` keeps the sweep folder (manifest.json, state.json, cells/) and runs each cell as
`python -m tlbench.train.worker cells/<id>.json` (`process`), one per GPU slot, each a fork of a
`zygote` that imported torch and timm once; `state` works out how a cell ended; `display` shows the
cells live. state.json's format is `tlbench._sweepdir`, which the report reads too.
A failed cell never stops the others, and running the same sweep again continues it.
On a cluster (`executor="slurm"`, `cluster=ClusterOptions(...)`), `cluster` submits the cells as a
Slurm job array with submitit and reads their states back; `cell_job` is what each job runs.
With `--protocols`, `evaluate` runs `tlbench eval` of every backbone after the cells (`<sweep>/eval`).

The run options every cell shares are a plain dict of `tlbench.config.run.run_config` keyword
arguments (the CLI parses them; nothing here imports it).
"""

from tlbench._sweepdir import MANIFEST_VERSION, CellState, failed_cells
from tlbench._util import split_list
from tlbench.sweep.cluster import ClusterOptions
from tlbench.sweep.command import SweepPlan, dry_run_sweep, plan_sweep, run_sweep, start_sweep, sweep_status
from tlbench.sweep.grid import (
    BASELINE_OPTIONS,
    SET_BY_THE_GRID,
    Cell,
    cell_dir,
    check_cells,
    expand_grid,
    run_option_names,
)
from tlbench.sweep.process import worker_command
from tlbench.sweep.runner import Sweep

__all__ = [
    "BASELINE_OPTIONS",
    "MANIFEST_VERSION",
    "SET_BY_THE_GRID",
    "Cell",
    "CellState",
    "ClusterOptions",
    "Sweep",
    "SweepPlan",
    "cell_dir",
    "check_cells",
    "dry_run_sweep",
    "expand_grid",
    "failed_cells",
    "plan_sweep",
    "run_option_names",
    "run_sweep",
    "split_list",
    "start_sweep",
    "sweep_status",
    "worker_command",
]
