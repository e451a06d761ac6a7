"""What a tuning trial's cluster job runs: one trial of a configuration's study, on a compute node.

A tuned sweep on Slurm (`tlbench sweep --executor slurm --tune ...`, `tlbench.sweep.tune_cluster`)
queues each study's trials in the study itself (Optuna's waiting trials, each with its slot) and
submits one task per queued trial. Each task (`TrialJob`) opens the same study from the shared
storage (`--storage`; SQLite `tune.db` in the sweep folder by default), takes a queued trial (its
values drawn then, by a TPE sampler seeded apart from the other tasks', with the constant liar),
trains it as a local sweep does (`trials/<configuration>-t<k>/`, the worker process), reports each
epoch's selection top-1 to the study and stops if successive halving prunes it, and tells the study
how it ended. At a time limit or on preemption, Slurm's USR2 stops the worker (its last epoch
checkpoint stays) and the same trial is requeued: the new job resumes it.

This module imports submitit (the `slurm` extra); nothing imports it until a trial is submitted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from tlbench._io import write_json
from tlbench.config.tuning import TuneOptions
from tlbench.sweep.cell_job import STOP_WAIT_S, _usr_signal, cell_command
from tlbench.sweep.grid import Cell
from tlbench.sweep.process import stop_with
from tlbench.sweep.state import LOG_HEADER
from tlbench.sweep.tune import Tuner, _Study, _Trial

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
        log = config_file.with_suffix(".log").open("a")
        job = os.environ.get("SLURM_JOB_ID", "local")
        log.write(f"{LOG_HEADER}{datetime.now().isoformat(timespec='seconds')} job {job} ---\n")
        log.flush()
        proc = subprocess.Popen(
            cell_command(config_file, self.gpus_per_trial, 1, job, ""),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=stop_with(os.getpid(), ignore=(_usr_signal(),)),
        )
        return proc, log


@dataclass
class TrialJob(Checkpointable):
    """One trial of one configuration's study as one cluster task; picklable, so it can be requeued.

    Attributes:
        folder: The sweep folder (on a file system every node sees).
        cell: The cell whose seed trains the configuration's trials.
        config: That cell's config as the sweep built it (its recipe's `search:` section).
        run_options: The run options every cell shares.
        options: The tuning budget (`storage` set: the study every task shares).
        task: This task's index in the submission (seeds its sampler apart from the others').
        gpus: GPUs per trial (above 1: torchrun on this node).
        number: The trial once taken: a requeued task resumes it. None: take a queued one.
    """

    folder: str
    cell: Cell
    config: dict[str, Any]
    run_options: dict[str, Any]
    options: TuneOptions
    task: int
    gpus: int = 1
    number: int | None = None
    _trial: _Trial | None = field(default=None, init=False, repr=False)

    def __call__(self) -> dict[str, Any]:
        """Train the trial on this node and tell the study; returns the trial's number and state."""
        node = _Node(Path(self.folder), {self.cell.id: self.config}, self.gpus)
        tuner = Tuner(node, [self.cell], self.run_options, self.options, task=self.task)
        st = next(iter(tuner.studies.values()))
        taken = take(tuner, st) if self.number is None else resume(st, self.number)
        if taken is None:  # every queued trial was taken by another task, or this one has ended
            return {"trial": self.number, "state": None}
        trial, k, reported = taken
        self.number = trial.number
        tr = tuner._start(st, trial, k, None)
        tr.reported = reported
        self._trial = tr
        while not tuner._watch(tr):
            time.sleep(_POLL_S)
        state = next(t.state.name for t in st.study.get_trials(deepcopy=False) if t.number == trial.number)
        return {"trial": trial.number, "state": state}

    # submitit takes None as "no requeue" (job_environment._checkpoint); its base class says otherwise
    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission | None:  # type: ignore[override]
        """Stop the trial's worker (it keeps its last epoch checkpoint) and requeue the same trial."""
        tr = self._trial
        if tr is not None and tr.proc is not None:
            tr.proc.send_signal(signal.SIGTERM)  # stops at its next batch
            deadline = time.time() + STOP_WAIT_S
            while tr.proc.poll() is None and time.time() < deadline:
                time.sleep(0.5)
            if tr.proc.poll() is None:
                tr.proc.kill()
            tr.log.close()
        again = TrialJob(self.folder, self.cell, self.config, self.run_options, self.options, self.task)
        again.gpus, again.number = self.gpus, self.number
        return DelayedSubmission(again)


def take(tuner: Tuner, st: _Study) -> tuple[Any, int, int] | None:
    """A queued trial of the study for this task (its values drawn now): (trial, slot, 0), or None
    where none is left. A trial drawn past the queue (another task took the last one first) is
    marked `surplus`, which does not count against the budget, and failed."""
    import optuna

    if not tuner.waiting(st):
        return None
    trial = st.study.ask()
    k = trial.user_attrs.get("slot")
    if k is None:
        trial.set_user_attr("surplus", True)
        st.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    return trial, int(k), 0


def resume(st: _Study, number: int) -> tuple[Any, int, int] | None:
    """Trial `number` again after a requeue: (trial, slot, epochs already reported), or None where
    it has ended (told before the job stopped) or the sweep gave it up."""
    import optuna

    frozen = next((t for t in st.study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or frozen.state != optuna.trial.TrialState.RUNNING:
        return None
    reported = max(frozen.intermediate_values, default=0)
    return optuna.Trial(st.study, frozen._trial_id), int(frozen.user_attrs["slot"]), reported
