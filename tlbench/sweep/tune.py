"""Tuning every configuration of a sweep with the same budget (`tlbench sweep --tune lr,...`).

Before its final runs, each configuration (backbone x recipe x freeze; its first seed trains the
trials) gets an Optuna study of its own, `--trials` trials of `--tune-epochs` epochs each:

- a seeded TPE sampler draws the tuned recipe values from their search spaces
  (`tlbench.config.tuning`);
- each trial is an ordinary run directory, `trials/<configuration>-t<k>/` (config.json marks it:
  `trial`), trained on the training split minus the selection split and scored on the selection
  split every epoch; it starts as a grid cell does (`Sweep.spawn`: a fork of the zygote);
- after each epoch the scheduler reports the trial's selection top-1 to Optuna, and a trial that
  successive halving prunes is asked to stop (`RunDir.request_stop`: status `stopped_early`);
- a trial's value is its best selection top-1.

The studies live in `--storage` (default SQLite `tune.db` in the sweep folder). A killed sweep
resumes them: finished trials are kept; a trial that was running is marked failed (`interrupted`)
and its values queued again, and the retry resumes its run directory from the last checkpoint.
`tuning.json` in the sweep folder (rewritten after every trial) is what the report reads: each
study's best values, its trials (state, value, epochs, device-seconds) and which cells it tunes.
The final runs then train with the best trial's values, on train + selection unless `--no-refit`.
"""

from __future__ import annotations

import itertools
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tlbench._console import say
from tlbench._io import write_json
from tlbench._sweepdir import TUNING, CellState
from tlbench.config.tuning import Space, TuneOptions
from tlbench.errors import Interrupted, OutputError, TlbenchError, UsageError
from tlbench.rundir import RunDir, SchemaError
from tlbench.sweep.grid import Cell, cell_dir
from tlbench.sweep.runner import Sweep

TUNE_DB = "tune.db"
MAX_RETRIES = 3
"""Interruptions of one trial slot without a new epoch after which it is not queued again (it
counts, failed); also the rounds of cluster tasks that end without taking their queued trial."""
_POLL_S = 0.2


def study_key(cell: Cell) -> str:
    """The configuration a cell belongs to: its id without the seed (`vgg19-keras-vgg19-f11`)."""
    return cell.id.rsplit("-s", 1)[0]


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / TUNE_DB).absolute()}"


def require_optuna() -> None:
    """Raises UsageError where Optuna (the `tune` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise UsageError("--tune needs Optuna", "pip install 'tlbench[tune]'")


@dataclass
class _Study:
    """One configuration's study: the cell whose seed trains its trials, and the Optuna study."""

    key: str
    cell: Cell
    study: Any
    spaces: dict[str, Space]
    cells: list[str] = field(default_factory=list)


@dataclass
class _Trial:
    """A trial whose process runs now."""

    study: _Study
    trial: Any
    slot_index: int
    run_dir: RunDir
    proc: Any
    log: Any
    started: float
    reported: int = 0
    pruned: str | None = None
    epochs: int | None = None  # the trial's epochs: pruning at the last one would save nothing


class Host(Protocol):
    """Where trials start: the local sweep (`runner.Sweep`), or a cluster task (`trial_job`)."""

    folder: Path
    gpus: list[str]
    configs: dict[str, dict[str, Any]]

    def spawn(self, payload: dict[str, Any], config_file: Path, slot: str | None) -> tuple[Any, Any]: ...


class Tuner:
    """Runs the studies of a sweep's configurations, one trial per GPU slot at a time.

    Args:
        sweep: Where the trials start: the local sweep (its folder, its GPU slots, its zygote), or
            a cluster task's node (`tlbench.sweep.trial_job`).
        cells: The grid's training cells (valid ones).
        run_options: The run options every cell shares.
        options: The tuning budget.
        task: A cluster task's index: trials drawn at once by several tasks get samplers seeded
            apart (and TPE's constant liar), not the same values. None: this process draws all.
    """

    def __init__(
        self,
        sweep: Host,
        cells: list[Cell],
        run_options: dict[str, Any],
        options: TuneOptions,
        task: int | None = None,
    ):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep, self.options, self.run_options, self.task = sweep, options, run_options, task
        self.folder = sweep.folder
        self.storage = options.storage or default_storage(self.folder)
        (self.folder / "trials").mkdir(parents=True, exist_ok=True)
        self.studies: dict[str, _Study] = {}
        for cell in cells:
            key = study_key(cell)
            if key not in self.studies:
                recipe = sweep.configs[cell.id]["config"]["recipe"]  # its search: section, if any
                spaces = options.spaces(recipe.get("search") or ())
                self.studies[key] = _Study(key, cell, self._study(key), spaces)
            self.studies[key].cells.append(cell.id)

    def _study(self, key: str) -> Any:
        import optuna

        done = 0
        try:
            summaries = optuna.get_all_study_summaries(self.storage)
            done = next((s.n_trials for s in summaries if s.study_name == key), 0)
            # seeded by the configuration and the trials so far: a resumed study goes on drawing
            seed = zlib.crc32(key.encode()) + done + 7919 * (self.task or 0)
            sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=self.task is not None)
            return optuna.create_study(
                storage=self.storage,
                study_name=key,
                direction="maximize",
                sampler=sampler,
                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
                load_if_exists=True,
            )
        except (ImportError, ValueError) as exc:
            where = _redacted(self.storage)
            raise UsageError(f"--storage {where} is not a usable database URL ({exc})") from None
        except Exception as exc:  # sqlalchemy's errors: unreachable server, bad credentials, ...
            where = _redacted(self.storage)
            raise OutputError(f"cannot open the tuning storage {where} ({type(exc).__name__})") from None

    # -- the scheduler --------------------------------------------------------------------------------

    def run(self) -> dict[str, dict[str, Any] | None]:
        """Run every study to its budget; return each configuration's best values (key -> params)."""
        for st in self.studies.values():
            self._recover(st)
        slots: list[str | None] = list(self.sweep.gpus) or [None]
        running: dict[str | None, _Trial] = {}
        try:
            while True:
                for slot in slots:
                    if slot not in running and (nxt := self._next(running)) is not None:
                        running[slot] = self._start(*nxt, slot)
                if not running:
                    break
                for slot, tr in list(running.items()):
                    if self._watch(tr):
                        del running[slot]
                        self.write_record()
                time.sleep(_POLL_S)
        except KeyboardInterrupt:
            for tr in running.values():  # they got the Ctrl-C too: they stop after their batch
                tr.proc.wait(timeout=120)
                tr.log.close()
            raise Interrupted(
                "sweep interrupted while tuning; finished trials are kept, running ones are retried",
                f"run the same command again (its folder is {self.folder}) to continue",
            ) from None
        self.write_record()
        return self.best()

    def best(self) -> dict[str, dict[str, Any] | None]:
        """Each configuration's best values (key -> params; None where no trial finished)."""
        return {k: self.best_params(st) for k, st in self.studies.items()}

    def _counted(self, st: _Study) -> list[Any]:
        """The study's trials that count against its budget: all but those a killed sweep left."""
        return [t for t in st.study.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted")]

    def waiting(self, st: _Study) -> list[Any]:
        """Trials queued for a cluster task (or a retry) that no process has taken yet."""
        import optuna

        return st.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))

    def done(self) -> bool:
        """Every study has its budget of trials, and each of them has ended."""
        return all(
            sum(t.state.is_finished() for t in self._counted(st)) >= self.options.trials
            for st in self.studies.values()
        )

    def _next(self, running: dict[str | None, _Trial]) -> tuple[_Study, Any, int] | None:
        """The next trial to start (its study, the Optuna trial, its index k), or None: all asked."""
        for st in self.studies.values():
            trials = self._counted(st)
            if len(trials) >= self.options.trials:
                continue
            trial = st.study.ask()
            k = trial.user_attrs.get("slot")
            if k is None:
                taken = {t.user_attrs.get("slot") for t in trials}
                k = next(i for i in range(self.options.trials + len(trials)) if i not in taken)
                trial.set_user_attr("slot", k)
            return st, trial, int(k)
        return None

    def _recover(self, st: _Study) -> None:
        """A trial left running by a killed sweep (or a cluster task that died): told complete if its
        run finished, else failed (`interrupted`, not counted) and queued again with the same values,
        to resume its run. A slot interrupted `MAX_RETRIES` times without a new epoch between is not
        queued again: it counts, failed."""
        import optuna

        for frozen in st.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            trial = optuna.Trial(st.study, frozen._trial_id)
            k = frozen.user_attrs.get("slot")
            run_dir = RunDir(self._trial_dir(st, int(k))) if k is not None else None
            if run_dir is not None and run_dir.finished:
                tr = _Trial(st, trial, int(k), run_dir, None, None, time.time())
                self._report(tr)
                self._tell(tr, 0.0)
                continue
            stuck = _stuck(st.study.get_trials(deepcopy=False), frozen)
            if stuck >= MAX_RETRIES:
                tell_failed(st.study, trial, f"interrupted {stuck} times without a new epoch")
                continue
            trial.set_user_attr("interrupted", True)
            st.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            st.study.enqueue_trial(frozen.params, user_attrs={"slot": k, "retry_of": frozen.number})

    def queue_rest(self, st: _Study) -> int:
        """Queue the trials a study still lacks, each with its own slot, for cluster tasks to take
        (`tlbench.sweep.trial_job`); returns how many trials now wait for a task."""
        trials = self._counted(st)
        taken = {t.user_attrs.get("slot") for t in trials}
        free = (i for i in itertools.count() if i not in taken)
        for _ in range(self.options.trials - len(trials)):
            st.study.enqueue_trial({}, user_attrs={"slot": next(free)})
        return len(self.waiting(st))

    # -- one trial ------------------------------------------------------------------------------------

    def _trial_dir(self, st: _Study, k: int) -> Path:
        return self.folder / "trials" / f"{st.key}-t{k}"

    def _start(self, st: _Study, trial: Any, k: int, slot: str | None) -> _Trial:
        """Start trial k of a study: the configuration with the trial's values, `--tune-epochs`."""
        values = {name: self._suggest(trial, st.spaces[name]) for name in self.options.names}
        out = self._trial_dir(st, k)
        run_dir = RunDir(out)
        if out.exists() and not run_dir.has_checkpoint and run_dir.holder() is None:
            shutil.rmtree(out)  # died before its first checkpoint (or finished under other values)
        options = self.run_options | values | {"trial": f"{st.key}#t{k}"}
        if self.options.tune_epochs is not None:
            options["epochs"] = self.options.tune_epochs
        payload = st.cell.config(options, out)
        payload["resume"] = run_dir.has_checkpoint
        proc, log = self.sweep.spawn(payload, out.with_name(out.name + ".json"), slot)
        trial.set_user_attr("run_dir", str(out.relative_to(self.folder)))
        epochs = payload["config"]["recipe"].get("epochs")
        return _Trial(st, trial, k, run_dir, proc, log, time.time(), epochs=epochs)

    @staticmethod
    def _suggest(trial: Any, space: Space) -> float:
        return float(trial.suggest_float(space.name, space.lo, space.hi, log=space.scale == "log"))

    def _report(self, tr: _Trial) -> None:
        """Report the epochs the trial has finished since the last look; ask a pruned one to stop."""
        try:
            rows = tr.run_dir.read_metrics()
        except SchemaError:  # being rewritten: next time
            return
        for row in rows[tr.reported :]:
            tr.trial.report(row.select_top1 or 0.0, row.epoch)
            tr.reported = row.epoch
            last = tr.epochs is not None and row.epoch >= tr.epochs
            if tr.proc is not None and tr.pruned is None and not last and tr.trial.should_prune():
                tr.pruned = f"pruned by successive halving at epoch {row.epoch} (trial {tr.trial.number})"
                tr.run_dir.request_stop(tr.pruned)

    def _watch(self, tr: _Trial) -> bool:
        """Look at a running trial; True once it has ended (and was told to its study)."""
        self._report(tr)
        code = tr.proc.poll()
        if code is None:
            return False
        tr.log.close()
        self._report(tr)
        self._tell(tr, time.time() - tr.started)
        return True

    def _tell(self, tr: _Trial, seconds: float) -> None:
        """Tell the study how the trial ended: its best selection top-1, pruned, or failed."""
        import optuna

        TrialState = optuna.trial.TrialState
        try:
            summary = tr.run_dir.read_summary() if tr.run_dir.finished else None
            rows = tr.run_dir.read_metrics()
        except SchemaError:
            summary, rows = None, []
        if summary is not None and not seconds:
            seconds = summary.device_seconds or summary.wall_seconds
        tr.trial.set_user_attr("device_seconds", round(seconds, 3))
        tr.trial.set_user_attr("epochs", len(rows))
        scores = [r.select_top1 for r in rows if r.select_top1 is not None]
        if summary is None or not scores or summary.status == "diverged":
            why = "diverged" if summary is not None else f"exit {getattr(tr.proc, 'returncode', None)}"
            tell_failed(tr.study.study, tr.trial, why)
        elif summary.status == "stopped_early":  # pruned (a trial that ran every epoch is complete)
            tr.study.study.tell(tr.trial, state=TrialState.PRUNED)
        else:
            tr.study.study.tell(tr.trial, max(scores))

    # -- results --------------------------------------------------------------------------------------

    def best_params(self, st: _Study) -> dict[str, Any] | None:
        """The best finished trial's values; None where no trial finished."""
        import optuna

        done = st.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not done:
            return None
        best = max(done, key=lambda t: (t.value, -t.number))
        return dict(best.params)

    def record(self) -> dict[str, Any]:
        """tuning.json: each study's budget, best values, trials and device-seconds."""
        studies = {}
        for key, st in self.studies.items():
            trials = [_trial_record(t) for t in st.study.get_trials(deepcopy=False)]
            counted = [t for t in trials if not t["interrupted"]]
            complete = [t for t in trials if t["state"] == "COMPLETE"]
            best = max(complete, key=lambda t: (t["value"], -t["number"]), default=None)
            studies[key] = {
                "tuned": list(self.options.names),
                "space": {n: s.text() for n, s in st.spaces.items()},
                "trials": self.options.trials,
                "tune_epochs": self.options.tune_epochs,
                "seed": st.cell.seed,
                "study": key,
                "best": best,
                "counts": {s: sum(t["state"] == s for t in counted) for s in ("COMPLETE", "PRUNED", "FAIL")},
                "device_seconds": round(sum(t["device_seconds"] or 0.0 for t in trials), 3),
                "history": trials,
                "cells": st.cells,
            }
        storage = self.storage if self.options.storage is None else _redacted(self.storage)
        return {"storage": storage, "refit": self.options.refit, "studies": studies}

    def write_record(self) -> None:
        write_json(self.folder / TUNING, self.record())


def tell_failed(study: Any, trial: Any, why: str) -> None:
    """Tell `study` that `trial` failed (it counts against the budget), with why (its `error`)."""
    import optuna

    trial.set_user_attr("error", why)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _stuck(trials: list[Any], frozen: Any) -> int:
    """How many of the tries of `frozen`'s slot (its earlier, interrupted trials and itself) ended
    without an epoch beyond those reported before it."""
    slot = frozen.user_attrs.get("slot")
    tries = [t for t in trials if t.user_attrs.get("slot") == slot and t.user_attrs.get("interrupted")]
    reached = [max(t.intermediate_values, default=0) for t in sorted(tries, key=lambda t: t.number)]
    reached.append(max(frozen.intermediate_values, default=0))
    return sum(r <= max(reached[:i], default=0) for i, r in enumerate(reached))


def _trial_record(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "slot": t.user_attrs.get("slot"),
        "state": t.state.name,
        "value": t.value,
        "params": dict(t.params),
        "epochs": t.user_attrs.get("epochs"),
        "device_seconds": t.user_attrs.get("device_seconds"),
        "interrupted": bool(t.user_attrs.get("interrupted")),
        "run_dir": t.user_attrs.get("run_dir"),
    }


def _redacted(url: str) -> str:
    """A storage URL without its password (`postgresql://user:***@host/db`)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def tuned_cells(sweep: Sweep) -> list[Cell]:
    """The cells a tuned sweep tunes: its valid training cells."""
    return [c for c in sweep.cells if c.kind == "run" and sweep.states[c.id].status != "invalid"]


def announce(tuner: Tuner) -> None:
    options = tuner.options
    say(
        f"tuning {', '.join(options.names)}: {len(tuner.studies)} configuration(s) x {options.trials} "
        f"trial(s) of {options.tune_epochs or 'the full'} epoch(s), studies in {_redacted(tuner.storage)}",
        soft_wrap=True,
    )


def tune_sweep(sweep: Sweep, run_options: dict[str, Any], options: TuneOptions) -> None:
    """Tune every configuration of the sweep's valid training cells here, then give each cell its
    final config (`apply_best`).

    Raises:
        Interrupted: Ctrl-C; what was tuned so far is kept.
    """
    cells = tuned_cells(sweep)
    if not cells:
        return
    tuner = Tuner(sweep, cells, run_options, options)
    announce(tuner)
    apply_best(sweep, cells, tuner.run(), run_options, options)


def apply_best(
    sweep: Sweep,
    cells: list[Cell],
    best: dict[str, dict[str, Any] | None],
    run_options: dict[str, Any],
    options: TuneOptions,
) -> None:
    """Give each cell its final config: the best trial's values of its configuration (and the
    selection images back in training, unless --no-refit).

    A configuration without a finished trial cannot be compared fairly: its cells become failed.
    """
    final = run_options | ({"select": "none"} if options.refit else {})
    for cell in cells:
        params = best[study_key(cell)]
        state = sweep.states[cell.id]
        if params is None:
            if state.status == "pending":
                why = "tuning: no trial finished"
                sweep.states[cell.id] = CellState("failed", error=why, attempts=state.attempts)
            continue
        try:
            sweep.configs[cell.id] = cell.config(final | params, cell_dir(sweep.folder, cell))
        except TlbenchError as exc:
            sweep.states[cell.id] = CellState("invalid", error=exc.one_line())
    sweep.save_state()


def tuning_manifest(options: TuneOptions | None) -> dict[str, Any] | None:
    """The tuning options as manifest.json records them (the storage's password left out)."""
    if options is None:
        return None
    values = asdict(options)
    if values["storage"]:
        values["storage"] = _redacted(values["storage"])
    return values
