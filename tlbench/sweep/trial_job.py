"""What a tuning trial's cluster job runs: one trial of a configuration's study, on a compute node.

A tuned sweep on Slurm (`tlbench sweep --executor slurm --tune ...`, `tlbench.sweep.tune_cluster`)
queues each study's trials in the study itself (Optuna's waiting trials, each with its slot) and
submits one task per queued trial, bound to it by its number. Each task (`TrialJob`) opens the
same study from the shared storage (`--storage`; SQLite `tune.db` in the sweep folder by default),
takes its own trial (no two tasks contend for one, which SQLite's locking could not prevent; its
values drawn then, by a TPE sampler seeded apart from the other tasks', with the constant liar),
trains it as a local sweep does (`trials/<configuration>-t<k>/`, the worker process), reports each
epoch's selection top-1 to the study and stops if successive halving prunes it, and tells the study
how it ended. At a time limit or on preemption, Slurm's USR2 stops the worker (its last epoch
checkpoint stays) and the same trial is requeued: the new job resumes it.

This module imports submitit (the `slurm` extra); nothing imports it until a trial is submitted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from tlbench._io import write_json
from tlbench.config.tuning import TuneOptions
from tlbench.errors import EXIT_INTERRUPTED
from tlbench.sweep.cell_job import (
    STALLED_TIMEOUTS,
    STOP_WAIT_S,
    cell_command,
    epochs_done,
    stalled_slots,
    start_worker,
    stop_worker,
)
from tlbench.sweep.grid import Cell
from tlbench.sweep.tune import Tuner, _Study, _Trial, tell_failed

_POLL_S = 1.0


@dataclass
class _Node:
    """A compute node as the `Tuner` sees it (`tune.Host`): the trial's worker on this node's GPUs."""

    folder: Path
    configs: dict[str, dict[str, Any]]
    gpus_per_trial: int
    gpus: list[str] = field(default_factory=list)  # one slot: the GPUs Slurm gave the job

    def spawn(self, payload: dict[str, Any], config_file: Path, slot: str | None) -> tuple[Any, Any]:
        write_json(config_file, payload)
        job = os.environ.get("SLURM_JOB_ID", "local")
        cmd = cell_command(config_file, self.gpus_per_trial, 1, job, "")
        return start_worker(cmd, config_file.with_suffix(".log"), job)


@dataclass
class TrialJob(Checkpointable):
    """One queued trial of one configuration's study as one cluster task; picklable, so it can be
    requeued.

    Attributes:
        folder: The sweep folder (on a file system every node sees).
        cell: The cell whose seed trains the configuration's trials.
        config: That cell's config as the sweep built it (its recipe's `search:` section).
        run_options: The run options every cell shares.
        options: The tuning budget (`storage` set: the study every task shares).
        number: The trial this task trains: queued for it by the sweep, so no two tasks take one.
        task: This task's index in the submission (seeds its sampler apart from the others').
        gpus: GPUs per trial (above 1: torchrun on this node).
        time_min: The job's time limit in minutes (tells a time limit from a preemption).
        stalled: Time slots in a row that ended without a finished epoch, before this one.
        resumed: A requeued task: its trial is running already, and this task resumes it.
    """

    folder: str
    cell: Cell
    config: dict[str, Any]
    run_options: dict[str, Any]
    options: TuneOptions
    number: int
    task: int
    gpus: int = 1
    time_min: int = 0
    stalled: int = 0
    resumed: bool = False
    _trial: _Trial | None = field(default=None, init=False, repr=False)
    _started: float = field(default_factory=time.time, init=False, repr=False)
    _epochs_at_start: int = field(default=0, init=False, repr=False)

    def __call__(self) -> dict[str, Any]:
        """Train the trial on this node and tell the study; returns the trial's number and state."""
        self._started = time.time()
        node = _Node(Path(self.folder), {self.cell.id: self.config}, self.gpus)
        tuner = Tuner(node, [self.cell], self.run_options, self.options, task=self.task)
        st = next(iter(tuner.studies.values()))
        claimed = claim(st, self.number, self.resumed)
        if claimed is None:  # it has ended, or another process runs it
            return {"trial": self.number, "state": None}
        trial, k, reported = claimed
        tr = tuner._start(st, trial, k, None)
        tr.reported = self._epochs_at_start = reported
        self._trial = tr
        while tr.proc.poll() is None:
            tuner._report(tr)
            time.sleep(_POLL_S)
        if tr.proc.returncode == EXIT_INTERRUPTED:
            # Slurm's SIGTERM reached the worker first (a preemption, scancel): the trial stays
            # running in the study. The USR2 that follows requeues this task to resume it; without
            # one, the sweep's next look queues the trial again.
            tr.log.close()
            time.sleep(STOP_WAIT_S + 30)
            return {"trial": self.number, "state": "RUNNING"}
        tuner._watch(tr)  # the worker has ended: tell the study
        state = next(t.state.name for t in st.study.get_trials(deepcopy=False) if t.number == trial.number)
        return {"trial": trial.number, "state": state}

    # submitit takes None as "no requeue" (job_environment._checkpoint); its base class says otherwise
    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission | None:  # type: ignore[override]
        """Stop the trial's worker (it keeps its last epoch checkpoint) and requeue the same trial.

        Not requeued when no epoch finished in `STALLED_TIMEOUTS` whole time slots in a row: the
        trial is told failed, with why.
        """

        tr = self._trial
        if tr is not None:
            stop_worker(tr.proc)
            tr.log.close()
        progress = tr is not None and epochs_done(tr.run_dir.path) > self._epochs_at_start
        stalled = stalled_slots(progress, self._started, self.time_min, self.stalled)
        if stalled >= STALLED_TIMEOUTS and tr is not None:
            why = f"no epoch finished in {stalled} time slots of {self.time_min} min in a row"
            why += "; give the trials a longer --slurm-time"
            tell_failed(tr.study.study, tr.trial, why)
            return None
        return DelayedSubmission(replace(self, stalled=stalled, resumed=True))


def claim(st: _Study, number: int, resumed: bool) -> tuple[Any, int, int] | None:
    """Trial `number` for this task: (trial, slot, epochs already reported to the study).

    A queued trial is taken now (what `Study.ask` does to the first queued trial, done to this
    task's own: its values are drawn as it starts); a requeued task resumes its running trial.
    None where the trial has ended, or runs in another process.
    """
    import optuna

    TrialState = optuna.trial.TrialState
    frozen = next((t for t in st.study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or frozen.state.is_finished() or (frozen.state == TrialState.RUNNING and not resumed):
        return None
    if frozen.state == TrialState.WAITING:
        try:
            if not st.study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return None
        except optuna.exceptions.UpdateFinishedTrialError:
            return None
    reported = max(frozen.intermediate_values, default=0)
    return optuna.Trial(st.study, frozen._trial_id), int(frozen.user_attrs["slot"]), reported
