"""Running a sweep: its folder's files, one worker process per cell and GPU slot, Ctrl-C.

A sweep folder holds `manifest.json` (the grid and the options every cell shares, written first),
`state.json` (each cell's state, rewritten atomically as cells start and end) and `cells/<id>/`,
each a normal run directory. Each cell's config (`tlbench.sweep.grid`) is written to
`cells/<id>.json` and run by its own process, `python -m tlbench.train.worker cells/<id>.json`,
whose output goes to `cells/<id>.log`. A crash, an out-of-memory or a bad cell is recorded as failed
with its error and never stops the others. That process is a fork of the sweep's zygote
(`tlbench.sweep.zygote`: a process that imported torch, timm and tlbench once), so a cell starts
training in about a second instead of importing them again; `TLBENCH_SWEEP_FORK=0` starts each
cell as its own interpreter instead. Running the same sweep again skips finished cells,
resumes those with a checkpoint, and retries the rest. A sweep on a cluster
(`tlbench.sweep.cluster.ClusterSweep`) keeps the same folder, its cells run as jobs.

One sweep at a time holds a sweep folder (`FolderLock`, for the sweep's whole life), and a cell's
process holds its run directory the same way, so a cell that another process still runs in is left
alone, never deleted or started twice. A cell's process gets SIGTERM when its sweep dies, however
it dies (Linux): it stops at its next batch with a checkpoint, instead of training on unwatched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlbench._console import console, plain, say
from tlbench._io import FolderLock, check_writable, write_json
from tlbench.errors import EXIT_INTERRUPTED, Interrupted, OutputError, TlbenchError, UsageError
from tlbench.rundir import RunDir
from tlbench.sweep.display import Display
from tlbench.sweep.grid import Cell, cell_dir, check_cells, drop_duplicates, expand_grid, run_option_names
from tlbench.sweep.zygote import Zygote, die_with_parent, libc_prctl

if TYPE_CHECKING:
    from tlbench.sweep.cluster import ClusterOptions

MANIFEST_VERSION = 2
"""2: the manifest holds `run_options` (run_config keyword arguments), not the forwarded argv."""


def worker_command(cell_file: Path) -> list[str]:
    """The process that runs one cell from its config file."""
    return [sys.executable, "-m", "tlbench.train.worker", str(cell_file)]


def fork_cells() -> bool:
    """Whether a local sweep forks its cells from a zygote (`TLBENCH_SWEEP_FORK`, on unless `0`)."""
    return os.environ.get("TLBENCH_SWEEP_FORK", "1") != "0"


def _stop_with(sweep_pid: int, ignore: tuple[signal.Signals, ...] = ()) -> Any:
    """A `preexec_fn` that has the cell's process sent SIGTERM when the sweep's process ends.

    The kernel sends it however the sweep ends (`kill -9` included); the cell then stops at its
    next batch with a resumable checkpoint. A no-op where prctl is missing. (Linux sends it when the
    thread that started the cell ends: here, the one that waits for every cell.) The cell's process
    and its children ignore the signals in `ignore` (an ignored signal stays ignored across exec).
    """
    libc_prctl()  # looked up before the fork

    def preexec() -> None:
        die_with_parent(sweep_pid, ignore)

    return preexec


def _signal_text(code: int) -> str:
    """'killed by signal 9 (SIGKILL)' for a process's negative return code -9."""
    try:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass
class CellState:
    status: str = "pending"  # pending | queued (a cluster job waits) | running | finished | failed | invalid
    error: str | None = None
    exit_code: int | None = None
    attempts: int = 0
    seconds: float | None = None
    gpu: str | None = None
    pid: int | None = None  # while running: the cell's process (ours, or another that holds its folder)
    note: str | None = None  # e.g. that another process runs the cell, so this sweep left it alone
    job_id: str | None = None  # a cluster sweep: the cell's last job (Slurm: <array job>_<index>)
    job_state: str | None = None  # ... and its state on the cluster when last seen (PENDING, RUNNING, ...)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CellState:
        """A state from state.json; keys of other versions (such as `extra`) are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


_LOG_HEADER = "--- "  # the line each start of a cell writes to its log, before the cell's output


def _error_line(log: Path) -> str:
    """Why the cell's last attempt failed: its `tlbench: error:` line, else its last line of output."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    starts = [i for i, ln in enumerate(lines) if ln.startswith(_LOG_HEADER)]
    lines = lines[starts[-1] + 1 :] if starts else lines  # the last attempt's output only
    for line in reversed(lines):
        if line.startswith("tlbench: error:"):
            return line.removeprefix("tlbench: error:").strip()
    return lines[-1][:300] if lines else "exited without output"


class Sweep:
    """Runs the cells of one sweep folder, one at a time or one per GPU."""

    def __init__(
        self,
        folder: Path,
        cells: list[Cell],
        configs: dict[str, dict[str, Any]],
        epochs: int,
        gpus: list[str],
        manifest: dict[str, Any],
    ) -> None:
        self.folder = folder
        self.cells = cells
        self.configs = configs
        self.epochs = epochs
        self.gpus = gpus
        self.manifest = manifest
        self.states: dict[str, CellState] = {}
        self.zygote: Zygote | None = None  # where a local sweep forks its cells from (`run_sweep`)

    # -- files ----------------------------------------------------------------------------------

    def cell_dir(self, cell: Cell) -> Path:
        return cell_dir(self.folder, cell)

    def cell_file(self, cell: Cell, suffix: str) -> Path:
        """`cells/<id>.json` (the config the worker runs) or `cells/<id>.log` (its output)."""
        return self.folder / "cells" / f"{cell.id}{suffix}"

    def save_state(self) -> None:
        write_json(self.folder / "state.json", {cid: asdict(st) for cid, st in self.states.items()})

    def prepare(self, problems: dict[str, str]) -> None:
        """Write the manifest (merged with an earlier run's) and each cell's state before running."""
        check_writable(self.folder)
        before = self._merge_manifest()
        (self.folder / "cells").mkdir(exist_ok=True)
        for cell in self.cells:
            old = CellState.from_dict(before.get(cell.id, {}))
            if cell.id in problems:
                self.states[cell.id] = CellState("invalid", error=problems[cell.id])
            else:
                self.states[cell.id] = self._initial_state(cell, old)
            self.states[cell.id].attempts = old.attempts
        self.save_state()

    def status(self, problems: dict[str, str]) -> dict[str, CellState]:
        """Each cell's state now, from state.json, its run directory (and its cluster job)."""
        before = self._read_states()
        for cell in self.cells:
            old = CellState.from_dict(before.get(cell.id, {}))
            invalid = CellState("invalid", error=problems.get(cell.id))
            self.states[cell.id] = invalid if cell.id in problems else self._observe(cell, old)
        return self.states

    def show_status(self, problems: dict[str, str]) -> dict[str, CellState]:
        """Print each cell's state now (`status`); save it too, unless a sweep runs in the folder."""
        states = self.status(problems)
        try:  # a sweep that runs now holds the folder and keeps state.json itself
            lock = FolderLock(self.folder, "sweep folder").acquire()
        except OutputError:
            lock = None
        if lock is not None:
            try:
                self.states = {c: CellState.from_dict(v) for c, v in self._read_states().items()} | states
                self.save_state()
            finally:
                lock.release()
        Display(self, live=False).show()
        return states

    def _read_states(self) -> dict[str, Any]:
        path = self.folder / "state.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _merge_manifest(self) -> dict[str, Any]:
        """Write manifest.json, keeping the cells of an earlier run; return the earlier states.

        Raises:
            OutputError: The folder holds a sweep with other run options, or one whose cluster jobs
                are still queued or running while this sweep would run its cells elsewhere.
        """
        path = self.folder / "manifest.json"
        before = self._read_states()
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("run_options") != self.manifest["run_options"]:
                theirs = (
                    _options_text(old["run_options"])
                    if isinstance(old.get("run_options"), dict)
                    else f"{' '.join(old.get('forwarded', []))}, from an older tlbench"
                )
                raise OutputError(
                    f"{self.folder} holds a sweep with other run options ({theirs})",
                    "use another --out, or the same options to continue it",
                )
            executor = old.get("executor", "local")
            jobs = [cid for cid, st in before.items() if st.get("job_id") and st.get("status") in _ACTIVE]
            if executor != self.manifest["executor"] and jobs:
                raise OutputError(
                    f"{self.folder} has {len(jobs)} cell(s) queued or running as {executor} jobs "
                    f"(such as {jobs[0]})",
                    f"wait for them (--status) or cancel them, or continue with --executor {executor}",
                )
            known = {c["id"] for c in old.get("cells", [])}
            self.manifest["cells"] = old["cells"] + [
                c for c in self.manifest["cells"] if c["id"] not in known
            ]
            self.manifest["created"] = old.get("created", self.manifest["created"])
        write_json(path, self.manifest)
        # cells of earlier runs of this sweep
        self.states = {cid: CellState.from_dict(st) for cid, st in before.items()}
        return before

    def _observe(self, cell: Cell, old: CellState) -> CellState:
        """A cell's state from its run directory; `old` is its state in state.json."""
        run_dir = RunDir(self.cell_dir(cell))
        holder = run_dir.holder()
        if holder is not None:  # a live process trains in it: not ours to delete or start
            return _elsewhere(holder, old.attempts)
        if run_dir.finished:
            return CellState("finished", attempts=old.attempts)
        if old.status in ("running", "finished"):  # its process ended unfinished, or it was deleted
            return CellState("pending", attempts=old.attempts)
        return old

    def _initial_state(self, cell: Cell, old: CellState) -> CellState:
        """A cell's state before this run: running elsewhere or finished (left alone), else pending."""
        state = self._observe(cell, old)
        if state.status in ("running", "finished"):
            return state
        run_dir = RunDir(self.cell_dir(cell))
        if run_dir.path.exists() and not run_dir.has_checkpoint:
            shutil.rmtree(run_dir.path)  # died before its first checkpoint: nothing to keep
        return CellState("pending")

    # -- running --------------------------------------------------------------------------------

    def run(self, live: bool) -> dict[str, CellState]:
        todo = [c for c in self.cells if self.states[c.id].status == "pending"]
        slots: list[str | None] = list(self.gpus) or [None]
        running: dict[str | None, tuple[Cell, Any, float, Any]] = {}  # a Popen or a ForkedCell
        display = Display(self, live)
        try:
            with display:
                while todo or running:
                    for slot in slots:
                        if slot not in running and todo:
                            cell = todo.pop(0)
                            self._start(cell, slot, running)
                    for slot, (cell, proc, started, log) in list(running.items()):
                        code = proc.poll()
                        if code is not None:
                            log.close()
                            self._finish(cell, code, time.time() - started)
                            del running[slot]
                    display.update()
                    time.sleep(0.2)
        except KeyboardInterrupt:
            # The terminal's Ctrl-C reached the cells too: they stop after their batch and exit.
            # Give them time; a second signal would make them stop at once, so send one only then.
            for cell, proc, _started, log in running.values():
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                log.close()
                self.states[cell.id].status, self.states[cell.id].pid = "pending", None
            self.save_state()
            raise Interrupted(
                "sweep interrupted; finished cells are kept and running ones resume from their checkpoint",
                f"run the same command again (its folder is {self.folder}) to continue",
            ) from None
        return self.states

    def _start(self, cell: Cell, slot: str | None, running: dict) -> None:
        """Start a cell and register it in `running` at once, so an interrupt can never orphan it.

        A cell that another process has claimed since `prepare` is left alone instead.
        """
        holder = RunDir(self.cell_dir(cell)).holder()
        if holder is not None:
            self.states[cell.id] = _elsewhere(holder, self.states[cell.id].attempts)
            self.save_state()
            return
        payload = dict(self.configs[cell.id])
        if cell.kind == "run":
            payload["resume"] = RunDir(self.cell_dir(cell)).has_checkpoint
        config_file = self.cell_file(cell, ".json")
        write_json(config_file, payload)
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        log = self.cell_file(cell, ".log").open("a")
        log.write(f"{_LOG_HEADER}{datetime.now().isoformat(timespec='seconds')} ---\n")
        log.flush()
        proc = self._launch(worker_command(config_file), log, env)
        running[slot] = (cell, proc, time.time(), log)
        state = self.states[cell.id]
        state.status, state.attempts, state.gpu, state.error = "running", state.attempts + 1, slot, None
        state.pid, state.note = proc.pid, None
        self.save_state()

    def _launch(self, cmd: list[str], log: Any, env: dict[str, str]) -> Any:
        """The cell's process: a fork of the zygote while there is one, else its own interpreter.

        Either way it shares the sweep's process group, so the terminal's Ctrl-C reaches it too.
        """
        if self.zygote is not None and self.zygote.alive and Zygote.can_run(cmd):
            proc = self.zygote.spawn(cmd, Path(log.name), env)
            if proc is not None:
                return proc
            code = self.zygote.proc.poll()
            say(
                ("sweep: ", "yellow"),
                f"the zygote that forks cells ended ({code}); cells start as their own interpreters",
            )
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_stop_with(os.getpid()),
        )

    def _finish(self, cell: Cell, code: int, seconds: float) -> None:
        finished = RunDir(self.cell_dir(cell)).finished
        _end_state(self.states[cell.id], code, seconds, finished, self.cell_file(cell, ".log"))
        self.save_state()


_ACTIVE = ("queued", "running")
"""The states of a cell whose process or job has not ended."""


def _end_state(state: CellState, code: int, seconds: float, finished: bool, log: Path) -> None:
    """Record in `state` how the cell's process ended: finished, or failed with why (from `log`)."""
    state.exit_code, state.seconds, state.pid = code, round(seconds, 1), None
    if code == 0 and finished:
        state.status = "finished"
    else:
        state.status = "failed"
        if code < 0:  # no last words from a killed process: its log's last line is not why
            state.error = _signal_text(code)
        elif code == EXIT_INTERRUPTED:
            state.error = "interrupted (resumable)"
        else:
            state.error = _error_line(log)


def _elsewhere(pid: int, attempts: int = 0) -> CellState:
    """The state of a cell whose run directory a live process other than this sweep holds."""
    who = f"pid {pid}" if pid else "pid unknown"
    note = f"in another process ({who}); left alone: run the sweep again once it ends"
    return CellState("running", attempts=attempts, pid=pid or None, note=note)


def _options_text(run_options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(run_options.items())) or "none"


def failed_cells(paths: list[Path]) -> list[tuple[Path, str, CellState]]:
    """The failed or invalid cells of the sweeps under `paths`: (sweep folder, cell id, state).

    Such a cell may have no run directory to show, so a report lists it from here.
    """
    found = []
    for root in paths:
        for state_file in sorted(Path(root).rglob("state.json")) if Path(root).is_dir() else []:
            if not (state_file.parent / "manifest.json").is_file():
                continue
            try:
                states = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            for cell, values in states.items():
                state = CellState.from_dict(values)
                if state.status in ("failed", "invalid"):
                    found.append((state_file.parent, cell, state))
    return found


def run_sweep(
    backbones: list[str],
    freezes: list[str],
    recipes: list[str],
    seeds: list[int],
    run_options: dict[str, Any],
    *,
    out: Path | None,
    gpus: list[str],
    baselines: bool,
    dry_run: bool,
    progress: bool = True,
    executor: str = "local",
    cluster: ClusterOptions | None = None,
    status: bool = False,
    wait: bool = False,
) -> tuple[Path, dict[str, CellState]]:
    """Expand, check, and run (or print) a sweep; return its folder and every cell's state.

    Args:
        backbones, freezes, recipes, seeds: The grid; every combination is a cell. A value listed
            twice counts once (with a note).
        run_options: `run_config` keyword arguments shared by every cell (`run_option_names()`),
            only those the user gave: the rest stay each recipe's own.
        out: The sweep folder; None names it by the grid and the options (`results/sweeps/sweep-<hash>`),
            so the same sweep asked for again continues in the same folder.
        gpus: Run one cell per GPU at a time (`CUDA_VISIBLE_DEVICES`); empty: one cell at a time.
        baselines: Add a zero-training baseline cell per backbone (with pretrained weights only).
        dry_run: Print the grid and its checks; run nothing, write nothing.
        progress: A live table (in a terminal) or a line per state change.
        executor: `local` (one process per cell and GPU slot), `slurm` (a Slurm job array; returns
            once submitted), or `submitit-local` (the cluster path with local processes, for tests).
        cluster: The `tlbench.sweep.cluster.ClusterOptions` of a cluster executor.
        status: Print each cell's state (from the cluster and its run directory); run nothing.
            The folder's own executor is asked, whatever `executor` says.
        wait: A cluster sweep: stay until every cell has ended, showing their states.

    Raises:
        UsageError: No backbone, an unknown recipe, run option or executor; a cluster executor
            without `cluster`.
        OutputError: The folder holds a sweep with other run options, is in use by another sweep
            (exit 6, naming its pid), or is not writable.
    """
    from tlbench.config import get_recipe

    if not backbones:
        raise UsageError("--backbones is empty", "e.g. --backbones vgg19,resnet50")
    if executor not in ("local", "slurm", "submitit-local"):
        raise UsageError(f"--executor {executor!r} is not one of local, slurm")
    if executor != "local" and cluster is None:
        raise UsageError(f"--executor {executor} needs the cells' resources", "give at least --slurm-time")
    unknown = sorted(set(run_options) - set(run_option_names()))
    if unknown:
        raise UsageError(f"not a run option of a sweep: {', '.join(unknown)}")
    backbones, repeated_backbones = drop_duplicates(backbones)
    freezes, repeated_freezes = drop_duplicates(freezes)
    recipes, repeated_recipes = drop_duplicates(recipes)
    seeds, repeated_seeds = drop_duplicates(seeds)
    repeated = {
        "backbones": repeated_backbones,
        "freeze depths": repeated_freezes,
        "recipes": repeated_recipes,
        "seeds": repeated_seeds,
    }
    dropped = "; ".join(f"{what} {', '.join(map(str, vs))}" for what, vs in repeated.items() if vs)
    if dropped:
        say(f"sweep: each cell runs once; dropped the repeated {dropped}", soft_wrap=True)
    for r in recipes:
        get_recipe(r)
    pretrained = run_options.get("pretrained", True)
    cells = expand_grid(backbones, freezes, recipes, seeds, baselines and pretrained)
    # The default folder is named by what the sweep is, so the same command continues the same sweep.
    key = json.dumps([backbones, freezes, recipes, seeds, baselines, run_options], sort_keys=True)
    folder = out or Path("results/sweeps") / f"sweep-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    configs: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for cell in cells:
        try:
            configs[cell.id] = cell.config(run_options, cell_dir(folder, cell))
        except TlbenchError as exc:
            problems[cell.id] = exc.one_line()
    # A local sweep's zygote imports torch and timm while the cells are checked (here, importing
    # them too); each cell is then a fork of it (`tlbench.sweep.zygote`).
    zygote = Zygote() if executor == "local" and not (dry_run or status) and fork_cells() else None
    try:
        problems |= check_cells(
            [c for c in cells if c.id not in problems], pretrained, run_options.get("weights")
        )
        epochs = max(
            (c["config"]["recipe"]["epochs"] for c in configs.values() if c["kind"] == "run"), default=0
        )
        manifest = {
            "schema_version": MANIFEST_VERSION,
            "created": datetime.now().isoformat(timespec="seconds"),
            "backbones": backbones,
            "freeze": freezes,
            "recipes": recipes,
            "seeds": seeds,
            "baselines": baselines,
            "run_options": run_options,
            "gpus": gpus,
            "executor": executor,
            "cluster": asdict(cluster) if cluster is not None else None,
            "cells": [asdict(c) for c in cells],
        }
        for cid, why in problems.items():
            say((f"sweep: {cid} will not run", "yellow"), f": {why}", soft_wrap=True)
        if dry_run:
            from rich.table import Table

            table = Table(title=f"{len(cells)} cell(s), {epochs} epoch(s) each (dry run: nothing started)")
            for col in ("cell", "kind", "backbone", "recipe", "freeze", "seed", "check"):
                table.add_column(col)
            for c in cells:
                row = (c.id, c.kind, c.backbone, c.recipe, c.freeze, c.seed, problems.get(c.id, "ok"))
                table.add_row(*(plain("" if v is None else v) for v in row))
            console().print(table)
            return folder, {c.id: CellState("invalid" if c.id in problems else "pending") for c in cells}
        if status:  # the folder's own executor is asked
            sweep = _sweep(folder, cells, configs, epochs, _saved_manifest(folder), wait=False)
            states = sweep.show_status(problems)
            return folder, {c.id: states[c.id] for c in cells}
        sweep = _sweep(folder, cells, configs, epochs, manifest, wait)
        sweep.zygote = zygote
        # One sweep per folder: a second one would start every cell again, and delete what this one starts.
        lock = FolderLock(folder, "sweep folder").acquire()
        try:
            sweep.prepare(problems)
            states = sweep.run(live=progress)
        finally:
            lock.release()
        return folder, {c.id: states[c.id] for c in cells}
    finally:
        if zygote is not None:
            zygote.close()


def _saved_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the sweep in `folder` (`executor` local unless it says otherwise).

    Raises:
        OutputError: The folder holds no sweep.
    """
    path = folder / "manifest.json"
    if not path.is_file():
        raise OutputError(f"{folder} holds no sweep yet", "run the same command without --status")
    return {"executor": "local"} | json.loads(path.read_text())


def _sweep(
    folder: Path,
    cells: list[Cell],
    configs: dict[str, dict[str, Any]],
    epochs: int,
    manifest: dict[str, Any],
    wait: bool,
) -> Sweep:
    """The sweep of the executor that `manifest` names (`wait`: a cluster sweep's)."""
    if manifest["executor"] == "local":
        return Sweep(folder, cells, configs, epochs, manifest["gpus"], manifest)
    from tlbench.sweep.cluster import ClusterSweep

    sweep = ClusterSweep(folder, cells, configs, epochs, [], manifest)
    sweep.wait = wait
    return sweep
