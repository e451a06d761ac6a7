"""`ClusterOptions`: the resources of each sweep cell's Slurm job (`tlbench sweep --executor slurm`).

Its fields are the sweep's Slurm flags (`tlbench.options.option`: help, panel, bounds), read by the
CLI and by `tlbench.sweep.cluster`, which submits the jobs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tlbench.errors import ConfigError
from tlbench.options import check, option

SIGNAL_DELAY_S = 120
"""Slurm sends USR2 this long before a job's time limit: the cell stops and is requeued."""

_SLURM = "Slurm (--executor slurm)"
"""The help panel of the sweep's Slurm options."""


def slurm_minutes(text: str) -> int:
    """A time limit in whole minutes: `240` (minutes, as Slurm reads it), `4h`, `90m`, `1d12h`,
    `HH:MM:SS` or `D-HH:MM:SS`.

    Raises:
        ConfigError: Not a time limit, or zero.
    """
    t = text.strip().lower()
    units = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?", t)
    clock = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", t)
    minutes = 0
    if t.isdigit():
        minutes = int(t)
    elif units and t:
        days, hours, mins = (int(g or 0) for g in units.groups())
        minutes = 1440 * days + 60 * hours + mins
    elif clock:
        days, hours, mins, secs = (int(g or 0) for g in clock.groups())
        minutes = 1440 * days + 60 * hours + mins + (secs > 0)
    if minutes <= 0:
        raise ConfigError("slurm_time", f"{text!r} is not a time limit", "e.g. 4h, 90m, 240 or 1-00:00:00")
    return minutes


@dataclass(frozen=True)
class ClusterOptions:
    """The resources of each cell's job; named as the `tlbench sweep` flags are.

    `cpus_per_cell`, `mem_per_cell` and `gpus_per_cell` are per node of the cell (one task per node:
    above one GPU, torchrun starts one training process per GPU). A baseline cell gets one node and
    at most one GPU.
    """

    slurm_time: str = option(
        help="Each job's time limit (4h, 90m, 240, 1-00:00:00); a longer cell is requeued and resumes "
        "from its last epoch. Needed with --executor slurm.",
        panel=_SLURM,
    )
    slurm_partition: str | None = option(None, help="The partition.", panel=_SLURM)
    slurm_account: str | None = option(None, help="The account.", panel=_SLURM)
    slurm_qos: str | None = option(None, help="The QOS.", panel=_SLURM)
    cpus_per_cell: int | None = option(None, help="CPUs per node of a cell.", panel=_SLURM, lo=1)
    mem_per_cell: str | None = option(None, help="Memory per node of a cell, e.g. 32G.", panel=_SLURM)
    gpus_per_cell: int = option(
        1, help="GPUs per node of a cell; above 1, DDP (torchrun).", panel=_SLURM, lo=0, hi=1024
    )
    nodes_per_cell: int = option(1, help="Nodes per cell (DDP across them).", panel=_SLURM, lo=1, hi=100_000)
    array_parallelism: int | None = option(None, help="At most this many cells at once.", panel=_SLURM, lo=1)

    def __post_init__(self) -> None:
        check(self)
        slurm_minutes(self.slurm_time)
        if self.mem_per_cell is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem_per_cell):
            raise ConfigError("mem_per_cell", f"{self.mem_per_cell!r} is not a memory size", "e.g. 32G")

    @property
    def time_min(self) -> int:
        return slurm_minutes(self.slurm_time)

    def slurm_parameters(self, gpus: int, nodes: int) -> dict[str, Any]:
        """submitit's `SlurmExecutor` parameters (sbatch's, with `_` for `-`) of a job of this size."""
        params = {
            "time": self.time_min,
            "partition": self.slurm_partition,
            "account": self.slurm_account,
            "qos": self.slurm_qos,
            "nodes": nodes,
            "ntasks_per_node": 1,
            "cpus_per_task": self.cpus_per_cell,
            "mem": self.mem_per_cell,
            "gpus_per_node": gpus or None,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": SIGNAL_DELAY_S,
            "additional_parameters": {"requeue": True},  # `scontrol requeue` works on every cluster
        }
        return {k: v for k, v in params.items() if v is not None}
