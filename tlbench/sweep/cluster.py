"""A sweep on a cluster: its cells submitted as one Slurm job array (submitit), and watched.

`tlbench sweep --executor slurm` writes each cell's config as a local sweep does, submits the cells
that are not finished as one job array (`sbatch --array=0-<N-1>%<parallelism>`, one task per cell;
what a task runs is `tlbench.sweep.cell_job.CellJob`) and returns. state.json keeps each cell's job
id; `tlbench sweep ... --status`, or the same command again, reads each cell's state from the
cluster (one `sacct` call for all the sweep's jobs, `tlbench.sweep.slurm`) and from its run
directory; without sacct, from the run directories alone (said once). The same command again also submits
the cells that failed or were never submitted, and leaves queued, running and finished ones alone.

`executor="submitit-local"` (Python API only) runs the same jobs as local processes
(`submitit.LocalExecutor`): the cluster path end to end on one machine, without Slurm.

Importing this module is cheap: submitit (the `slurm` extra) is imported when jobs are submitted
or watched.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from tlbench._console import say
from tlbench._sweepdir import ACTIVE, CellState, read_states
from tlbench.config.cluster import ClusterOptions
from tlbench.errors import Interrupted, UsageError
from tlbench.rundir import RunDir
from tlbench.sweep.display import Display
from tlbench.sweep.grid import Cell
from tlbench.sweep.runner import Sweep
from tlbench.sweep.slurm import SlurmUnavailable, poll_intervals, sacct_states, submit
from tlbench.sweep.state import end_state, error_line

Executor = Literal["local", "slurm"]
"""Where a sweep's cells run: local processes (one per `--gpus` slot), or a Slurm job array."""
EXECUTORS = ("local", "slurm", "submitit-local")
"""Every executor `run_sweep` takes; `submitit-local` (submitit's local processes) is for tests."""

MAX_REQUEUES = 1000
"""submitit's limit on requeues after a time limit; `CellJob` stops a cell that makes no progress."""

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
    def job_name(self) -> str:
        """The jobs' name on the cluster (`squeue --name`)."""
        return f"tlbench-{self.folder.name}"

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
        job = self._job(cell.id, old.job_id)
        state = self._job_state(job, old.job_id)
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
        return state if state.status in (*ACTIVE, "finished") else self._restart(cell, state)

    def prepare(self, problems: dict[str, str]) -> None:
        self._poll(read_states(self.folder))
        super().prepare(problems)

    def status(self, problems: dict[str, str]) -> dict[str, CellState]:
        self._poll(read_states(self.folder))
        return super().status(problems)

    @cached_property
    def _sacct(self) -> dict[str, str]:
        """Job id -> its state at the last poll (`_poll`): one sacct call for every job of the sweep."""
        return {}

    def _poll(self, states: dict[str, dict] | dict[str, CellState]) -> None:
        """Ask sacct, once, for the state of every job that `states` has queued or running.

        Without an answer (no sacct, or it failed), say so once and keep the last answer: the
        cells' run directories still tell which finished.
        """
        if self.kind != "slurm":
            return
        ids = [st.job_id for st in map(_as_state, states.values()) if st.job_id and st.status in ACTIVE]
        if ids:
            self._ask_sacct(ids, "the cells' states come from their run directories only")

    def _ask_sacct(self, job_ids: list[str], otherwise: str) -> None:
        """One sacct call for `job_ids`, its answer kept; without one, say (once) what happens instead."""
        try:
            self._sacct.update(sacct_states(job_ids))
        except SlurmUnavailable as exc:
            if not getattr(self, "_said_no_sacct", False):
                say(("sweep: ", "yellow"), f"{exc}: {otherwise}", soft_wrap=True)
                self._said_no_sacct = True

    def _job_state(self, job: Any, job_id: str) -> str:
        """The job's state on the cluster: from the last sacct poll, or from submitit's local job."""
        state = self._sacct.get(job_id, "UNKNOWN") if self.kind == "slurm" else str(job.state)
        return state.upper().split(" BY ")[0]  # sacct: "CANCELLED by 1234"

    def _job(self, key: str, job_id: str) -> Any:
        """The submitit Job of a cell (key: its id) or a tuning trial (key: the job id): the one
        submitted here, else rebuilt from its id."""
        if key in self.jobs:
            return self.jobs[key]
        import submitit

        job_class = submitit.SlurmJob if self.kind == "slurm" else submitit.LocalJob
        return job_class(folder=self.jobs_folder, job_id=job_id)

    @staticmethod
    def _outcome(job: Any) -> dict[str, Any] | None:
        """What `CellJob` returned (exit code, seconds), or None: no result, or the job raised."""
        if not job.paths.result_pickle.exists():
            return None
        from submitit.core.utils import pickle_load

        try:  # read here: submitit's job.result() would ask sacct again
            outcome, result = pickle_load(job.paths.result_pickle)
        except Exception:  # a result being written, or damaged: the log says why
            return None
        return result if outcome == "success" and isinstance(result, dict) else None

    # -- running ----------------------------------------------------------------------------------

    def run(self, live: bool) -> dict[str, CellState]:
        """Submit every pending cell; with `wait`, follow them until each has ended.

        Raises:
            UsageError: `wait` on a Slurm sweep without sacct, which it follows the jobs with
                (checked before anything is submitted).
        """
        self.check_wait()
        self._submit([c for c in self.cells if self.states[c.id].status == "pending"])
        with Display(self, live) as display:
            if self.wait:
                self.follow(display)
        return self.states

    def follow(self, display: Display) -> None:
        """Stay until every cell has ended (`--wait`): at each poll (`poll_intervals`: further and
        further apart), one sacct call for all the jobs; save and show the cells' states.

        Raises:
            Interrupted: Ctrl-C; the jobs go on.
        """
        import time

        delays = poll_intervals()
        try:
            while any(self.states[c.id].status in ACTIVE for c in self.cells):
                time.sleep(next(delays))
                self._poll(self.states)
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
            folder = str(self.folder.resolve())
            tasks = [CellJob(folder, c.id, gpus, nodes, o.time_min) for c in cells]
            jobs = self.submit_array(tasks, gpus, nodes)
            for cell, job in zip(cells, jobs, strict=True):
                self.jobs[cell.id] = job
                attempts = self.states[cell.id].attempts + 1
                note = f"job {job.job_id}"
                self.states[cell.id] = CellState(
                    "queued", attempts=attempts, job_id=job.job_id, job_state="SUBMITTED", note=note
                )
            self.save_state()

    def submit_array(self, tasks: list[Any], gpus: int, nodes: int) -> list[Any]:
        """Submit `tasks` as one job array, each task with `gpus` GPUs on each of `nodes` nodes."""
        executor = self._executor()  # one per array: each its own resources
        if self.kind == "slurm":
            executor.update_parameters(**self.options.slurm_parameters(gpus, nodes))
        else:
            executor.update_parameters(timeout_min=self.options.time_min, gpus_per_node=gpus)
        return submit(executor, tasks, self.job_name)

    def active_jobs(self, job_ids: list[str]) -> list[str]:
        """The jobs among `job_ids` (tuning trials') still queued or running: by sacct, and a job
        it does not list (yet, or without sacct at all) counts until it has left its result."""
        if not job_ids:
            return []
        if self.kind == "slurm":
            self._ask_sacct(job_ids, "a trial job counts as running until it leaves its result")
        active = []
        for job_id in job_ids:
            job = self._job(job_id, job_id)
            state = self._job_state(job, job_id)
            ended = job.paths.result_pickle.exists()
            if state in _QUEUED or state in _RUNNING or (state in _UNKNOWN and not ended):
                active.append(job_id)
        return active

    def check_wait(self) -> None:
        """Raises UsageError: `wait` on a Slurm sweep without sacct, which it follows the jobs with
        (checked before anything is submitted)."""
        if self.wait and self.kind == "slurm" and shutil.which("sacct") is None:
            raise UsageError(
                "--wait follows the jobs with Slurm's sacct, which is not on PATH; nothing was submitted",
                "submit without --wait, then follow the cells with the same command and --status",
            )

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
        executor.update_parameters(job_name=self.job_name)
        return executor


def _as_state(value: dict[str, Any] | CellState) -> CellState:
    return value if isinstance(value, CellState) else CellState.from_dict(value)
