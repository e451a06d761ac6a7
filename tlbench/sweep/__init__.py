"""`tlbench sweep`: a grid of backbones x freeze depths x recipes x seeds, one process per cell.

    folder, states = run_sweep(["vgg19", "resnet50"], ["none", "all"], ["keras-vgg19"], [0, 1],
                               {"epochs": 5}, out=None, gpus=["0", "1"], baselines=True, dry_run=False)

`grid` expands the grid into cells, builds and checks each cell's config before anything runs;
`runner` keeps the sweep folder (manifest.json, state.json, cells/) and runs each cell as
`python -m tlbench.train.worker cells/<id>.json`, one per GPU slot, each a fork of a `zygote` that
imported torch and timm once; `display` shows the cells live.
A failed cell never stops the others, and running the same sweep again continues it.
On a cluster (`executor="slurm"`, `cluster=ClusterOptions(...)`), `cluster` submits the cells as a
Slurm job array with submitit and reads their states back; `cell_job` is what each job runs.

The run options every cell shares are a plain dict of `tlbench.config.run.run_config` keyword
arguments (the CLI parses them; nothing here imports it).
"""

from tlbench.sweep.cluster import ClusterOptions
from tlbench.sweep.grid import (
    BASELINE_OPTIONS,
    SET_BY_THE_GRID,
    Cell,
    cell_dir,
    check_cells,
    expand_grid,
    run_option_names,
    split_list,
)
from tlbench.sweep.runner import MANIFEST_VERSION, CellState, Sweep, failed_cells, run_sweep, worker_command

__all__ = [
    "BASELINE_OPTIONS",
    "MANIFEST_VERSION",
    "SET_BY_THE_GRID",
    "Cell",
    "CellState",
    "ClusterOptions",
    "Sweep",
    "cell_dir",
    "check_cells",
    "expand_grid",
    "failed_cells",
    "run_option_names",
    "run_sweep",
    "split_list",
    "worker_command",
]
