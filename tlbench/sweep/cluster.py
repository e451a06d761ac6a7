"""A sweep on a cluster: its cells submitted as one Slurm job array (submitit), and watched.

`tlbench sweep --executor slurm` writes each cell's config as a local sweep does, submits the cells
that are not finished as one job array (`sbatch --array=0-<N-1>%<parallelism>`, one task per cell;
what a task runs is `tlbench.sweep.cell_job.CellJob`) and returns. state.json keeps each cell's job
id; `tlbench sweep ... --status`, or the same command again, reads each cell's state from the
cluster (sacct, through submitit) and from its run directory. The same command again also submits
the cells that failed or were never submitted, and leaves queued, running and finished ones alone.

`executor="submitit-local"` (Python API only) runs the same jobs as local processes
(`submitit.LocalExecutor`): the cluster path end to end on one machine, without Slurm.

Importing this module is cheap: submitit (the `slurm` extra) is imported when jobs are submitted
or watched.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from tlbench._sweepdir import ACTIVE, CellState
from tlbench._util import first_line
from tlbench.config.cluster import ClusterOptions
from tlbench.errors import Interrupted, OutputError, UsageError
from tlbench.rundir import RunDir
from tlbench.sweep.display import Display
from tlbench.sweep.grid import Cell
from tlbench.sweep.runner import Sweep
from tlbench.sweep.state import end_state, error_line

Executor = Literal["local", "slurm"]
"""Where a sweep's cells run: local processes (one per `--gpus` slot), or a Slurm job array."""
EXECUTORS = ("local", "slurm", "submitit-local")
"""Every executor `run_sweep` takes; `submitit-local` (submitit's local processes) is for tests."""

MAX_REQUEUES = 1000
"""submitit's limit on requeues after a time limit; `CellJob` stops a cell that makes no progress."""
POLL_S = 2.0
"""How often `--wait` looks at the cells (sacct itself is asked at most every few minutes)."""

_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
_QUEUED.add("PREEMPTED")  # a preempted job is requeued
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
_UNKNOWN = {"UNKNOWN", "NO PROCESS AND NO RESULT", ""}  # not in sacct yet; a local job of another process
_COMPLETED = {"COMPLETED", "FINISHED"}  # the job ran to its end (Slurm, submitit's local executor)


class ClusterSweep(Sweep):
    """A sweep whose cells are cluster jobs: submitted as a job array, their states read back.

    Its manifest names the executor (`slurm`, or `submitit-local`: submitit's local processes) and
    the jobs' resources (`ClusterOptions`). With `wait`, `run` stays until every cell has ended.
    """

    wait = False

    @property
    def kind(self) -> str:
        return self.manifest["executor"]

    @cached_property
    def options(self) -> ClusterOptions:
        return ClusterOptions(**self.manifest["cluster"])

    @cached_property
    def jobs(self) -> dict[str, Any]:
        """Cell id -> the submitit Job that this process submitted."""
        return {}

    @property
    def jobs_folder(self) -> Path:
        """submitit's files: the pickled cells, their results, sbatch scripts, submitit's own logs."""
        return self.folder / "jobs"

    # -- states -----------------------------------------------------------------------------------

    def _observe(self, cell: Cell, old: CellState) -> CellState:
        finished = RunDir(self.cell_dir(cell)).finished
        if old.job_id is None or old.status not in ACTIVE:  # no job to ask: the run directory says
            if finished:
                return replace(old, status="finished", error=None, note=None)
            return CellState("pending", attempts=old.attempts) if old.status == "finished" else old
        job = self._job(cell, old.job_id)
        state = str(job.state).upper().split(" BY ")[0]  # sacct: "CANCELLED by 1234"
        note = f"job {old.job_id} {state}"
        if state in _QUEUED or state in _RUNNING:
            status = "queued" if state in _QUEUED else "running"
            return replace(old, status=status, job_state=state, note=note)
        outcome = self._outcome(job)
        if outcome is None and state in _UNKNOWN:
            status = "finished" if finished else old.status
            return replace(old, status=status, job_state=state or "UNKNOWN", note=None if finished else note)
        new = replace(old, job_state=state, note=None)
        log = self.cell_file(cell, ".log")
        if outcome is not None and state in _COMPLETED | _UNKNOWN:
            end_state(new, outcome["exit_code"], outcome["seconds"], finished, log)
        elif finished:  # the cell finished, then its job was ended (or failed on its way out)
            new.status, new.error = "finished", None
        else:
            why = error_line(log) if log.is_file() else f"no output; see {job.paths.stderr}"
            new.status, new.error = "failed", f"job {state}: {why}"
        return new

    def _initial_state(self, cell: Cell, old: CellState) -> CellState:
        state = self._observe(cell, old)
        return state if state.status in (*ACTIVE, "finished") else CellState("pending")

    def _job(self, cell: Cell, job_id: str) -> Any:
        """The submitit Job of a cell: the one submitted here, else rebuilt from its id."""
        if cell.id in self.jobs:
            return self.jobs[cell.id]
        import submitit

        job_class = submitit.SlurmJob if self.kind == "slurm" else submitit.LocalJob
        return job_class(folder=self.jobs_folder, job_id=job_id)

    @staticmethod
    def _outcome(job: Any) -> dict[str, Any] | None:
        """What `CellJob` returned (exit code, seconds), or None: no result, or the job raised."""
        if not job.paths.result_pickle.exists():
            return None
        try:
            return job.result()
        except Exception:  # submitit's own failure (e.g. not requeued): the log says why
            return None

    # -- running ----------------------------------------------------------------------------------

    def run(self, live: bool) -> dict[str, CellState]:
        """Submit every pending cell; with `wait`, follow them until each has ended."""
        self._submit([c for c in self.cells if self.states[c.id].status == "pending"])
        with Display(self, live) as display:
            if self.wait:
                self.follow(display)
        return self.states

    def follow(self, display: Display) -> None:
        """Stay until every cell has ended (`--wait`): ask for their states every `POLL_S`, save
        and show them.

        Raises:
            Interrupted: Ctrl-C; the jobs go on.
        """
        try:
            while any(self.states[c.id].status in ACTIVE for c in self.cells):
                time.sleep(POLL_S)
                for cell in self.cells:
                    if self.states[cell.id].status in ACTIVE:
                        self.states[cell.id] = self._observe(cell, self.states[cell.id])
                self.save_state()
                display.update()
        except KeyboardInterrupt:
            raise Interrupted(
                "stopped following the sweep; its jobs go on",
                f"follow them with the same command and --status (its folder is {self.folder})",
            ) from None

    def _submit(self, todo: list[Cell]) -> None:
        """Submit the cells as job arrays: training cells with their resources, baselines with one GPU."""
        if not todo:
            return
        from submitit.core.utils import FailedJobError

        from tlbench._io import write_json
        from tlbench.sweep.cell_job import CellJob

        o = self.options
        groups = [
            ([c for c in todo if c.kind == "run"], o.gpus_per_cell, o.nodes_per_cell),
            ([c for c in todo if c.kind != "run"], min(o.gpus_per_cell, 1), 1),
        ]
        for cells, gpus, nodes in groups:
            if not cells:
                continue
            for cell in cells:
                write_json(self.cell_file(cell, ".json"), self.configs[cell.id])  # `resume`: set by the job
            executor = self._executor()  # one per array: each its own resources
            if self.kind == "slurm":
                executor.update_parameters(**o.slurm_parameters(gpus, nodes))
            else:
                executor.update_parameters(timeout_min=o.time_min, gpus_per_node=gpus)
            folder = str(self.folder.resolve())
            try:
                jobs = executor.submit_array([CellJob(folder, c.id, gpus, nodes, o.time_min) for c in cells])
            except FailedJobError as exc:
                raise OutputError(
                    f"the cluster refused the sweep's jobs: {first_line(str(exc), with_type=False)}",
                    "check --slurm-partition, --slurm-account, --slurm-qos and the resources",
                ) from None
            for cell, job in zip(cells, jobs, strict=True):
                self.jobs[cell.id] = job
                attempts = self.states[cell.id].attempts + 1
                note = f"job {job.job_id}"
                self.states[cell.id] = CellState(
                    "queued", attempts=attempts, job_id=job.job_id, job_state="SUBMITTED", note=note
                )
            self.save_state()

    def _executor(self) -> Any:
        import submitit

        if self.kind != "slurm":
            return submitit.LocalExecutor(folder=self.jobs_folder, max_num_timeout=MAX_REQUEUES)
        try:
            executor = submitit.SlurmExecutor(folder=self.jobs_folder, max_num_timeout=MAX_REQUEUES)
        except RuntimeError:  # submitit finds no srun
            raise UsageError(
                "--executor slurm needs Slurm (sbatch, srun, sacct on PATH)",
                "run the sweep on a login node of the cluster",
            ) from None
        executor.update_parameters(job_name=f"tlbench-{self.folder.name}")
        return executor
