"""What a sweep cell's cluster job runs: the cell's worker, stopped and requeued at a time limit.

`CellJob` is the callable submitit pickles into each task of the sweep's job array
(`tlbench.sweep.cluster`). On the compute node it decides whether the cell resumes (its run
directory holds a checkpoint), then runs the same worker as a local sweep,
`python -m tlbench.train.worker cells/<id>.json`, with output appended to `cells/<id>.log`; a cell of
`--gpus-per-cell N > 1` (or `--nodes-per-cell M > 1`) runs under torchrun, one process per GPU.

Before the job's time limit, or on preemption, Slurm sends USR2 (`#SBATCH --signal=USR2@120`):
submitit calls `checkpoint()`, which stops the worker (SIGTERM: it stops at its next batch; the last
epoch checkpoint stays) and hands back the same cell to requeue, so a 1,000-epoch cell goes on
across any number of 4-hour jobs. A cell that finished no epoch in two whole time slots in a row
is not requeued: it never would (its log says so, and the sweep records it as failed).

This module imports submitit (the `slurm` extra); nothing imports it until a job is submitted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from submitit import JobEnvironment
from submitit.helpers import Checkpointable, DelayedSubmission

from tlbench._io import write_json
from tlbench.errors import EXIT_INTERRUPTED
from tlbench.rundir import RunDir, SchemaError
from tlbench.sweep.process import stop_with, worker_command
from tlbench.sweep.state import LOG_HEADER
from tlbench.train.worker import read_cell

STOP_WAIT_S = 90
"""How long `checkpoint()` waits for the worker to stop (Slurm signals 120 s before the limit)."""
STALLED_TIMEOUTS = 2
"""Whole time slots in a row without a finished epoch after which a cell is no longer requeued."""
_RDZV_PORTS = (29500, 2000)
"""torchrun's rendezvous port for a multi-node cell: 29500 + (a hash of the job id mod 2000)."""


def cell_command(cell_file: Path, gpus: int, nodes: int, job_id: str, master: str) -> list[str]:
    """The cell's process: the worker itself, or torchrun with one worker per GPU of each node.

    Args:
        cell_file: `cells/<id>.json`.
        gpus: GPUs per node of the cell (torchrun's `--nproc-per-node`; 0 counts as one process).
        nodes: Nodes of the cell; above 1 the nodes meet at `master` (c10d rendezvous).
        job_id: The job's id, which names the rendezvous (and picks its port).
        master: The first node of the job.
    """
    if gpus <= 1 and nodes <= 1:
        return worker_command(cell_file)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(max(gpus, 1))]
    if nodes <= 1:
        launch.append("--standalone")  # a free local port: cells that share a node never collide
    else:
        port = _RDZV_PORTS[0] + zlib.crc32(job_id.encode()) % _RDZV_PORTS[1]
        launch += ["--nnodes", str(nodes), "--rdzv-backend", "c10d"]
        launch += ["--rdzv-endpoint", f"{master}:{port}", "--rdzv-id", job_id]
    return [*launch, "-m", "tlbench.train.worker", str(cell_file)]


def epochs_done(run_dir: Path) -> int:
    """Epochs in the run directory's metrics.csv (0 before the first, or while it is unreadable)."""
    try:
        return len(RunDir(run_dir).read_metrics())
    except SchemaError:
        return 0


def start_worker(cmd: list[str], log_file: Path, job_id: str) -> tuple[subprocess.Popen, Any]:
    """Start a worker of this job (a cell's, a tuning trial's), its output appended to `log_file`
    after a header naming the job: (the process, the open log). Slurm's USR2 is for this job, which
    stops the worker itself (`stop_worker`); the worker dies with the job."""
    log = log_file.open("a")
    log.write(f"{LOG_HEADER}{datetime.now().isoformat(timespec='seconds')} job {job_id} ---\n")
    log.flush()
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=stop_with(os.getpid(), ignore=(_usr_signal(),)),
    )
    return proc, log


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGTERM: the worker stops at its next batch; killed after `STOP_WAIT_S` (only the unfinished
    epoch is lost: checkpoints are atomic)."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.time() + STOP_WAIT_S
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()


def stalled_slots(progress: bool, started: float, time_min: int, stalled: int) -> int:
    """Whole time slots in a row without a finished epoch, this one counted: 0 after progress or a
    preemption (the job ended well before its limit)."""
    timed_out = time.time() - started >= 0.8 * 60 * time_min
    return 0 if progress or not timed_out else stalled + 1


def _usr_signal() -> signal.Signals:
    """The signal Slurm sends before the time limit (submitit's choice, USR2 unless configured)."""
    return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]


@dataclass
class CellJob(Checkpointable):
    """One sweep cell as one cluster job (one task per node); picklable, so it can be requeued.

    Attributes:
        folder: The sweep folder (on a file system every node sees).
        cell_id: The cell's id: its config is `cells/<id>.json`, its log `cells/<id>.log`.
        gpus: GPUs per node of the cell (above 1: torchrun).
        nodes: Nodes of the cell.
        time_min: The job's time limit in minutes (tells a time limit from a preemption).
        stalled: Time slots in a row that ended without a finished epoch, before this one.
    """

    folder: str
    cell_id: str
    gpus: int
    nodes: int
    time_min: int
    stalled: int = 0
    # while the job runs: the worker, when this attempt began, epochs done then, stopped by us
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _started: float = field(default_factory=time.time, init=False, repr=False)
    _epochs_at_start: int = field(default=0, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)

    def _file(self, suffix: str) -> Path:
        """`cells/<id>.json` (the config), `cells/<id>.log` (node 0's output), `cells/<id>.node<k>.log`."""
        return Path(self.folder) / "cells" / f"{self.cell_id}{suffix}"

    def __call__(self) -> dict[str, Any]:
        """Run the cell on this node; return the worker's exit code and seconds (node 0's)."""
        env = JobEnvironment()
        self._started = time.time()
        payload = read_cell(self._file(".json"))
        run_dir = RunDir(Path(payload["config"]["out"]))
        if run_dir.finished:  # ended just before the job was requeued: nothing left to do
            return {"exit_code": 0, "seconds": 0.0}
        if payload["kind"] == "run":
            unclaimed = run_dir.path.exists() and not run_dir.has_checkpoint and run_dir.holder() is None
            if env.global_rank == 0 and unclaimed:
                shutil.rmtree(run_dir.path, ignore_errors=True)  # died before its first checkpoint
            # Every node writes the same: nothing is trained before all of them meet (rendezvous).
            payload["resume"] = run_dir.has_checkpoint
            write_json(self._file(".json"), payload)
            self._epochs_at_start = epochs_done(run_dir.path)
        gpus, nodes = (self.gpus, self.nodes) if payload["kind"] == "run" else (1, 1)  # a baseline: one
        cmd = cell_command(self._file(".json"), gpus, nodes, env.job_id, env.hostnames[0])
        suffix = ".log" if env.node == 0 else f".node{env.node}.log"
        self._proc, log = start_worker(cmd, self._file(suffix), env.job_id)
        with log:
            # Polled, not wait()ed: `checkpoint()` runs in a signal handler on this thread and
            # polls the same process (Popen.wait would hold the lock that poll needs).
            while (code := self._proc.poll()) is None:
                time.sleep(1)
        if code == EXIT_INTERRUPTED and not self._stopping:
            # Slurm's SIGTERM reached the worker first (a preemption): the USR2 that requeues the
            # cell follows within the signal delay. Wait for it rather than end the job as failed.
            time.sleep(STOP_WAIT_S + 30)
        return {"exit_code": code, "seconds": round(time.time() - self._started, 1)}

    # submitit takes None as "no requeue" (job_environment._checkpoint); its base class says otherwise
    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission | None:  # type: ignore[override]
        """Stop the worker (it keeps its last epoch checkpoint) and hand back the same cell to requeue.

        The requeued cell resumes: it finds the checkpoint in its run directory. None (no requeue)
        when the cell finished no epoch in `STALLED_TIMEOUTS` whole time slots in a row.
        """
        self._stopping = True
        if self._proc is not None:
            stop_worker(self._proc)
        payload = read_cell(self._file(".json"))
        progress = epochs_done(Path(payload["config"]["out"])) > self._epochs_at_start
        stalled = stalled_slots(progress, self._started, self.time_min, self.stalled)
        if stalled >= STALLED_TIMEOUTS:
            with self._file(".log").open("a") as log:
                log.write(
                    f"tlbench: error: no epoch finished in {stalled} time slots of {self.time_min} min "
                    "in a row; not requeued. Give the cell a longer --slurm-time\n"
                )
            return None
        return DelayedSubmission(
            CellJob(self.folder, self.cell_id, self.gpus, self.nodes, self.time_min, stalled)
        )
