"""Running a local sweep: its folder's files, one worker process per cell and GPU slot, Ctrl-C.

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
(`tlbench.sweep.cluster.ClusterSweep`, a subclass of `Sweep`) keeps the same folder, its cells run
as jobs. Which of the two runs a sweep, and the dry run and `--status`, are `tlbench.sweep.command`.

One sweep at a time holds a sweep folder (`FolderLock`, for the sweep's whole life), and a cell's
process holds its run directory the same way, so a cell that another process still runs in is left
alone, never deleted or started twice. A cell's process gets SIGTERM when its sweep dies, however
it dies (Linux): it stops at its next batch with a checkpoint, instead of training on unwatched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tlbench._console import say
from tlbench._io import FolderLock, check_writable, write_json
from tlbench._sweepdir import ACTIVE, MANIFEST, CellState, read_manifest, read_states, write_states
from tlbench.errors import Interrupted, OutputError
from tlbench.rundir import RunDir
from tlbench.sweep.display import Display
from tlbench.sweep.grid import Cell, cell_dir
from tlbench.sweep.process import stop_with, worker_command
from tlbench.sweep.stall import StallWatch
from tlbench.sweep.state import DAMAGED_CHECKPOINT, LOG_HEADER, elsewhere, end_state, start_over
from tlbench.sweep.zygote import Zygote

ENDED = ("finished", "stopped early")
"""The states of a cell whose run directory is complete: never started again."""


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
        self.zygote: Zygote | None = None  # where a local sweep forks its cells from (`command.start_sweep`)
        self.race: Any = None  # a `race.Race` that stops the cells clearly behind (`--race`)

    # -- files ----------------------------------------------------------------------------------

    def cell_dir(self, cell: Cell) -> Path:
        return cell_dir(self.folder, cell)

    def cell_file(self, cell: Cell, suffix: str) -> Path:
        """`cells/<id>.json` (the config the worker runs) or `cells/<id>.log` (its output)."""
        return self.folder / "cells" / f"{cell.id}{suffix}"

    def save_state(self) -> None:
        write_states(self.folder, self.states)

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
        before = read_states(self.folder)
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
                saved = read_states(self.folder)
                self.states = {c: CellState.from_dict(v) for c, v in saved.items()} | states
                self.save_state()
            finally:
                lock.release()
        Display(self, live=False).show()
        return states

    def _merge_manifest(self) -> dict[str, Any]:
        """Write manifest.json, keeping the cells of an earlier run; return the earlier states.

        Raises:
            OutputError: The folder holds a sweep with other run options, or one whose cluster jobs
                are still queued or running while this sweep would run its cells elsewhere.
        """
        path = self.folder / MANIFEST
        before = read_states(self.folder)
        if path.is_file():
            old = read_manifest(self.folder)
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
            _check_recipe_files(
                self.folder, old.get("recipe_files") or {}, self.manifest.get("recipe_files") or {}
            )
            executor = old.get("executor", "local")
            jobs = [cid for cid, st in before.items() if st.get("job_id") and st.get("status") in ACTIVE]
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
            return elsewhere(holder, old.attempts)
        if run_dir.finished:
            return _ended(run_dir, CellState("finished", attempts=old.attempts))
        if old.status in ("running", *ENDED):  # its process ended unfinished, or it was deleted
            return CellState("pending", attempts=old.attempts)
        return old

    def _initial_state(self, cell: Cell, old: CellState) -> CellState:
        """A cell's state before this run: running elsewhere or finished (left alone), else pending."""
        state = self._observe(cell, old)
        if state.status in ("running", *ENDED):
            return state
        run_dir = RunDir(self.cell_dir(cell))
        if run_dir.path.exists() and not run_dir.has_checkpoint:
            shutil.rmtree(run_dir.path)  # died before its first checkpoint: nothing to keep
        return self._restart(cell, state)

    def _restart(self, cell: Cell, state: CellState) -> CellState:
        """A cell that has not finished, before a rerun: pending, unless its last attempt found its
        checkpoint damaged and the checkpoint is still there. That cell would only fail again: it
        stays failed, and says how to start it over."""
        run_dir = RunDir(self.cell_dir(cell))
        if state.status == "failed" and DAMAGED_CHECKPOINT in (state.error or "") and run_dir.has_checkpoint:
            state.error = start_over(state.error or "", run_dir.path)
            return state
        return CellState("pending")

    # -- running --------------------------------------------------------------------------------

    def run(self, live: bool) -> dict[str, CellState]:
        todo = [c for c in self.cells if self.states[c.id].status == "pending"]
        slots: list[str | None] = list(self.gpus) or [None]
        running: dict[str | None, tuple[Cell, Any, float, Any]] = {}  # a Popen or a ForkedCell
        display = Display(self, live)
        stalls = StallWatch()
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
                    if self.race is not None:
                        self.race.check(self, [cell for cell, *_ in running.values()])
                    self._watch_stalls(stalls, running)
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

    def _watch_stalls(self, stalls: StallWatch, running: dict) -> None:
        """Name, once per stall, a running cell that has written nothing for a long while."""
        for cell, proc, started, _log in running.values():
            files = [self.cell_file(cell, ".log"), self.cell_dir(cell) / "metrics.csv"]
            note = stalls.check(cell.id, proc.pid, started, files)
            state = self.states[cell.id]
            if note is not None:
                say(f"sweep: {note}", style="yellow", soft_wrap=True)
                state.note = note
                self.save_state()
            elif state.note and not stalls.stalled(cell.id) and " has not advanced since " in state.note:
                state.note = None  # it advanced again
                self.save_state()

    def _start(self, cell: Cell, slot: str | None, running: dict) -> None:
        """Start a cell and register it in `running` at once, so an interrupt can never orphan it.

        A cell that another process has claimed since `prepare` is left alone instead.
        """
        holder = RunDir(self.cell_dir(cell)).holder()
        if holder is not None:
            self.states[cell.id] = elsewhere(holder, self.states[cell.id].attempts)
            self.save_state()
            return
        payload = dict(self.configs[cell.id])
        if cell.kind == "run":
            payload["resume"] = RunDir(self.cell_dir(cell)).has_checkpoint
        proc, log = self.spawn(payload, self.cell_file(cell, ".json"), slot)
        running[slot] = (cell, proc, time.time(), log)
        state = self.states[cell.id]
        state.status, state.attempts, state.gpu, state.error = "running", state.attempts + 1, slot, None
        state.pid, state.note = proc.pid, None
        self.save_state()

    def spawn(self, payload: dict[str, Any], config_file: Path, slot: str | None) -> tuple[Any, Any]:
        """Write `payload` to `config_file` and start its worker on `slot`, output appended to the
        file's `.log`: (the process, the open log). Grid cells and tuning trials start here alike."""
        write_json(config_file, payload)
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        log = config_file.with_suffix(".log").open("a")
        log.write(f"{LOG_HEADER}{datetime.now().isoformat(timespec='seconds')} ---\n")
        log.flush()
        return self._launch(worker_command(config_file), log, env), log

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
            preexec_fn=stop_with(os.getpid()),
        )

    def _finish(self, cell: Cell, code: int, seconds: float) -> None:
        run_dir = RunDir(self.cell_dir(cell))
        end_state(self.states[cell.id], code, seconds, run_dir.finished, self.cell_file(cell, ".log"))
        if self.states[cell.id].status == "finished":
            _ended(run_dir, self.states[cell.id])
        self.save_state()


def _ended(run_dir: RunDir, state: CellState) -> CellState:
    """A finished cell's state: `stopped early` (with why) where its sweep stopped it (a race)."""
    try:
        reason = run_dir.read_summary().stop_reason
    except OutputError:
        return state
    if reason is not None:
        state.status, state.note = "stopped early", reason
    return state


def _options_text(run_options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(run_options.items())) or "none"


def _check_recipe_files(folder: Path, before: dict[str, str], now: dict[str, str]) -> None:
    """Refuse to continue a sweep whose recipe files were edited since: its cells trained with the
    old values, and would be reported as if they were the new ones.

    Raises:
        OutputError: A recipe file's content differs from when the sweep began.
    """
    changed = sorted(r for r in now if r in before and before[r] != now[r])
    if changed:
        raise OutputError(
            f"the recipe file {', '.join(changed)} changed since the sweep in {folder} began "
            "(its cells trained with the old values)",
            "leave out --out (an edited recipe gets a folder of its own), give another --out, "
            "or restore the file to continue",
        )
