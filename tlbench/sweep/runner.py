"""Running a sweep: its folder's files, one worker process per cell and GPU slot, Ctrl-C.

A sweep folder holds `manifest.json` (the grid and the options every cell shares, written first),
`state.json` (each cell's state, rewritten atomically as cells start and end) and `cells/<id>/`,
each a normal run directory. Each cell's config (`tlbench.sweep.grid`) is written to
`cells/<id>.json` and run by its own process, `python -m tlbench.train.worker cells/<id>.json`,
whose output goes to `cells/<id>.log`. A crash, an out-of-memory or a bad cell is recorded as failed
with its error and never stops the others. Running the same sweep again skips finished cells,
resumes those with a checkpoint, and retries the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from tlbench._console import console
from tlbench._io import check_writable, write_json
from tlbench.errors import EXIT_INTERRUPTED, Interrupted, OutputError, TlbenchError, UsageError
from tlbench.rundir import RunDir
from tlbench.sweep.display import Display
from tlbench.sweep.grid import Cell, cell_dir, check_cells, expand_grid, run_option_names

MANIFEST_VERSION = 2
"""2: the manifest holds `run_options` (run_config keyword arguments), not the forwarded argv."""


def worker_command(cell_file: Path) -> list[str]:
    """The process that runs one cell from its config file."""
    return [sys.executable, "-m", "tlbench.train.worker", str(cell_file)]


@dataclass
class CellState:
    status: str = "pending"  # pending | running | finished | failed | invalid
    error: str | None = None
    exit_code: int | None = None
    attempts: int = 0
    seconds: float | None = None
    gpu: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CellState:
        """A state from state.json; keys of other versions (such as `extra`) are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
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

    # -- files ----------------------------------------------------------------------------------

    def cell_dir(self, cell: Cell) -> Path:
        return cell_dir(self.folder, cell)

    def cell_file(self, cell: Cell, suffix: str) -> Path:
        """`cells/<id>.json` (the config the worker runs) or `cells/<id>.log` (its output)."""
        return self.folder / "cells" / f"{cell.id}{suffix}"

    def save_state(self) -> None:
        write_json(self.folder / "state.json", {cid: asdict(st) for cid, st in self.states.items()})

    def prepare(self, problems: dict[str, str]) -> None:
        check_writable(self.folder)
        path = self.folder / "manifest.json"
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
            known = {c["id"] for c in old.get("cells", [])}
            self.manifest["cells"] = old["cells"] + [
                c for c in self.manifest["cells"] if c["id"] not in known
            ]
            self.manifest["created"] = old.get("created", self.manifest["created"])
        write_json(path, self.manifest)
        (self.folder / "cells").mkdir(exist_ok=True)
        before: dict[str, Any] = {}
        if (self.folder / "state.json").is_file():
            before = json.loads((self.folder / "state.json").read_text())
            # cells of earlier runs of this sweep
            self.states = {cid: CellState.from_dict(st) for cid, st in before.items()}
        for cell in self.cells:
            run_dir = RunDir(self.cell_dir(cell))
            if cell.id in problems:
                self.states[cell.id] = CellState("invalid", error=problems[cell.id])
            elif run_dir.finished:
                self.states[cell.id] = CellState("finished")
            else:
                if run_dir.path.exists() and not run_dir.has_checkpoint:
                    shutil.rmtree(run_dir.path)  # died before its first checkpoint: nothing to keep
                self.states[cell.id] = CellState("pending")
            self.states[cell.id].attempts = before.get(cell.id, {}).get("attempts", 0)
        self.save_state()

    # -- running --------------------------------------------------------------------------------

    def run(self, live: bool) -> dict[str, CellState]:
        todo = [c for c in self.cells if self.states[c.id].status == "pending"]
        slots: list[str | None] = list(self.gpus) or [None]
        running: dict[str | None, tuple[Cell, subprocess.Popen, float, Any]] = {}
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
                    display.update(running)
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
                self.states[cell.id].status = "pending"
            self.save_state()
            raise Interrupted(
                "sweep interrupted; finished cells are kept and running ones resume from their checkpoint",
                f"run the same command again (its folder is {self.folder}) to continue",
            ) from None
        return self.states

    def _start(self, cell: Cell, slot: str | None, running: dict) -> None:
        """Start a cell and register it in `running` at once, so an interrupt can never orphan it."""
        payload = dict(self.configs[cell.id])
        if cell.kind == "run":
            payload["resume"] = RunDir(self.cell_dir(cell)).has_checkpoint
        config_file = self.cell_file(cell, ".json")
        write_json(config_file, payload)
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        log = self.cell_file(cell, ".log").open("a")
        log.write(f"--- {datetime.now().isoformat(timespec='seconds')} ---\n")
        log.flush()
        cmd = worker_command(config_file)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        running[slot] = (cell, proc, time.time(), log)
        state = self.states[cell.id]
        state.status, state.attempts, state.gpu, state.error = "running", state.attempts + 1, slot, None
        self.save_state()

    def _finish(self, cell: Cell, code: int, seconds: float) -> None:
        state = self.states[cell.id]
        state.exit_code, state.seconds = code, round(seconds, 1)
        if code == 0 and RunDir(self.cell_dir(cell)).finished:
            state.status = "finished"
        else:
            state.status = "failed"
            state.error = _error_line(self.cell_file(cell, ".log"))
            if code == EXIT_INTERRUPTED:
                state.error = "interrupted (resumable)"
        self.save_state()


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
) -> tuple[Path, dict[str, CellState]]:
    """Expand, check, and run (or print) a sweep; return its folder and every cell's state.

    Args:
        backbones, freezes, recipes, seeds: The grid; every combination is a cell.
        run_options: `run_config` keyword arguments shared by every cell (`run_option_names()`),
            only those the user gave: the rest stay each recipe's own.
        out: The sweep folder; None names it by the grid and the options (`results/sweeps/sweep-<hash>`),
            so the same sweep asked for again continues in the same folder.
        gpus: Run one cell per GPU at a time (`CUDA_VISIBLE_DEVICES`); empty: one cell at a time.
        baselines: Add a zero-training baseline cell per backbone (with pretrained weights only).
        dry_run: Print the grid and its checks; run nothing, write nothing.
        progress: A live table (in a terminal) or a line per state change.

    Raises:
        UsageError: No backbone, an unknown recipe or run option.
        OutputError: The folder holds a sweep with other run options, or is not writable.
    """
    from tlbench.train.recipes import get_recipe

    if not backbones:
        raise UsageError("--backbones is empty", "e.g. --backbones vgg19,resnet50")
    unknown = sorted(set(run_options) - set(run_option_names()))
    if unknown:
        raise UsageError(f"not a run option of a sweep: {', '.join(unknown)}")
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
    problems |= check_cells(
        [c for c in cells if c.id not in problems], pretrained, run_options.get("weights")
    )
    epochs = max((c["config"]["recipe"]["epochs"] for c in configs.values() if c["kind"] == "run"), default=0)
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
        "cells": [asdict(c) for c in cells],
    }
    for cid, why in problems.items():
        console().print(f"[yellow]sweep: {cid} will not run[/]: {why}", soft_wrap=True)
    if dry_run:
        from rich.table import Table

        table = Table(title=f"{len(cells)} cell(s), {epochs} epoch(s) each (dry run: nothing started)")
        for col in ("cell", "kind", "backbone", "recipe", "freeze", "seed", "check"):
            table.add_column(col)
        for c in cells:
            table.add_row(
                c.id,
                c.kind,
                c.backbone,
                c.recipe or "",
                c.freeze or "",
                "" if c.seed is None else str(c.seed),
                problems.get(c.id, "ok"),
            )
        console().print(table)
        return folder, {c.id: CellState("invalid" if c.id in problems else "pending") for c in cells}
    sweep = Sweep(folder, cells, configs, epochs, gpus, manifest)
    sweep.prepare(problems)
    states = sweep.run(live=progress)
    return folder, {c.id: states[c.id] for c in cells}
