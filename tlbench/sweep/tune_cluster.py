"""Tuning a cluster sweep: the trials run as cluster tasks that share each configuration's study.

`tlbench sweep --executor slurm --tune ...` does on the cluster what a local tuned sweep does here
(`tlbench.sweep.tune`), with the same budget and the same records:

1. Each configuration's study is opened in the storage (`--storage`; SQLite `tune.db` in the sweep
   folder by default, on a file system every node sees) and the trials it still lacks are queued
   in it, each with its slot; one job array is submitted with one task per queued trial
   (`tlbench.sweep.trial_job.TrialJob`, the cells' resources). Each task takes a queued trial
   from the study, trains it on its node, and tells the study how it ended.
2. The same command again (or `--wait`, which polls) looks at the trial jobs. While some are
   queued or running it says so; once none are, a trial left running by a task that died is
   queued again (as a killed local sweep's is), and resubmitted; when every study has its budget,
   the final runs get the best values and are submitted as the cells' job array.

state.json keeps the cells `pending` until then; `trials/jobs.json` keeps the trial jobs' ids.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from tlbench._console import say
from tlbench._io import write_json
from tlbench.config.tuning import TuneOptions
from tlbench.sweep.cluster import ClusterSweep
from tlbench.sweep.slurm import poll_intervals
from tlbench.sweep.tune import (
    MAX_RETRIES,
    TUNE_DB,
    Tuner,
    announce,
    apply_best,
    default_storage,
    tell_failed,
    tuned_cells,
)

TRIAL_JOBS = "jobs.json"
"""In the sweep's `trials/` folder: the job ids of the trial tasks submitted last."""


def tune_on_cluster(sweep: ClusterSweep, run_options: dict[str, Any], options: TuneOptions) -> bool:
    """Submit the trials the studies lack, or, once every study has its trials, give each cell its
    final config (`tune.apply_best`).

    Returns:
        True once tuning has ended (the cells can be submitted); False while trials wait or run
        (with `sweep.wait`, it polls until they have ended instead).
    """
    sweep.check_wait()
    cells = tuned_cells(sweep)
    if not cells:
        return True
    tuner = Tuner(sweep, cells, run_options, options)
    delays = poll_intervals()
    while not _settled(sweep, tuner, run_options):
        if not sweep.wait:
            return False
        time.sleep(next(delays))
    tuner.write_record()
    apply_best(sweep, cells, tuner.best(), run_options, options)
    return True


def _settled(sweep: ClusterSweep, tuner: Tuner, run_options: dict[str, Any]) -> bool:
    """One look at the trials: True once every study has its budget; else submit what is missing
    (when no trial job is left queued or running) and say where tuning stands."""
    record = _read_jobs(sweep)
    active = sweep.active_jobs(record["jobs"])
    if not active:
        for st in tuner.studies.values():
            tuner._recover(st)  # a trial whose task died: queued again (or given up)
        if not tuner.done():
            active = _submit_trials(sweep, tuner, run_options, record["rounds"])
        if tuner.done():
            return True
    tuner.write_record()
    if not sweep.wait:
        say(
            ("sweep: ", "cyan"),
            f"tuning: {len(active)} trial task(s) queued or running ({_ids(active)}); the final runs are "
            "submitted by the same command once they have ended (or add --wait)",
            soft_wrap=True,
        )
    return False


def _submit_trials(
    sweep: ClusterSweep, tuner: Tuner, run_options: dict[str, Any], rounds: dict[str, int]
) -> list[str]:
    """Queue each study's missing trials and submit one task per queued trial, bound to it; their
    job ids. A queued trial whose tasks ended `MAX_RETRIES` times without taking it (a node that
    cannot reach the storage, a broken environment) is given up: failed, with why."""
    from tlbench.sweep.trial_job import TrialJob

    options = replace(tuner.options, storage=tuner.storage)  # every task opens the same study
    folder = str(sweep.folder.resolve())
    gpus, time_min = sweep.options.gpus_per_cell, sweep.options.time_min
    tasks: list[TrialJob] = []
    for st in tuner.studies.values():
        tuner.queue_rest(st)
        for trial in tuner.waiting(st):
            key = f"{st.key}#{trial.number}"
            if rounds.get(key, 0) >= MAX_RETRIES:
                _give_up(st, trial.number, f"its task ended {rounds[key]} times without taking it")
                continue
            rounds[key] = rounds.get(key, 0) + 1
            config = sweep.configs[st.cell.id]
            task = TrialJob(
                folder, st.cell, config, run_options, options, trial.number, len(tasks), gpus, time_min
            )
            tasks.append(task)
    if not tasks:
        return []
    announce(tuner)
    jobs = sweep.submit_array(tasks, gpus, 1)
    ids = [str(job.job_id) for job in jobs]
    for job_id, job in zip(ids, jobs, strict=True):
        sweep.jobs[job_id] = job
    write_json(sweep.folder / "trials" / TRIAL_JOBS, {"jobs": ids, "rounds": rounds})
    return ids


def _give_up(st: Any, number: int, why: str) -> None:
    """Tell the study that its queued trial `number` failed, and why (it counts against the budget)."""
    from tlbench.sweep.trial_job import claim

    claimed = claim(st, number, resumed=False)
    if claimed is not None:
        tell_failed(st.study, claimed[0], why)


def say_tuning(folder: Path, options: TuneOptions, keys: list[str]) -> None:
    """`--status` of a tuned sweep: per study of its configurations (`keys`), its trials ended,
    running and queued (from the storage itself: cluster tasks tell the study, not tuning.json)."""
    import optuna

    storage = options.storage or default_storage(folder)
    if options.storage is None and not (folder / TUNE_DB).is_file():
        return  # not tuned yet
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name in keys]
        studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    except Exception as exc:  # sqlalchemy's errors: unreachable server, bad credentials, ...
        say(("sweep: ", "yellow"), f"cannot read the tuning storage ({type(exc).__name__})")
        return
    for name, study in zip(names, studies, strict=True):
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted")]
        count = Counter(t.state.name for t in trials)
        ended = count["COMPLETE"] + count["PRUNED"] + count["FAIL"]
        best = f", best selection top-1 {study.best_value:.3f}" if count["COMPLETE"] else ""
        say(
            f"tuning {name}: {ended} of {options.trials} trial(s) ended, {count['RUNNING']} running, "
            f"{count['WAITING']} queued{best}",
            soft_wrap=True,
        )


def _read_jobs(sweep: ClusterSweep) -> dict[str, Any]:
    """trials/jobs.json: the trial tasks submitted last (`jobs`), and how often each queued trial
    was submitted (`rounds`, by `<study>#<trial number>`)."""
    try:
        record = json.loads((sweep.folder / "trials" / TRIAL_JOBS).read_text())
        return {"jobs": [str(j) for j in record["jobs"]], "rounds": dict(record.get("rounds", {}))}
    except (OSError, ValueError, KeyError, TypeError):
        return {"jobs": [], "rounds": {}}


def _ids(jobs: list[str]) -> str:
    """`job 1234` for one array's tasks (`1234_0`, `1234_1`, ...), else the ids."""
    arrays = sorted({j.split("_")[0] for j in jobs})
    return f"job {arrays[0]}" if len(arrays) == 1 else "jobs " + ", ".join(arrays)
