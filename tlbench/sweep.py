"""`tlbench sweep`: a grid of backbones x freeze depths x recipes x seeds, one process per cell.

A sweep folder holds `manifest.json` (the grid and the options every cell shares, written first),
`state.json` (each cell's state, rewritten atomically as cells start and end) and `cells/<id>/`,
each a normal run directory, with the cell's output in `cells/<id>.log`. A crash, an out-of-memory
or a bad cell is recorded as failed with its error and never stops the others. Running the same
sweep again skips finished cells, resumes those with a checkpoint, and retries the rest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tlbench._console import console
from tlbench._io import check_writable, write_json
from tlbench.errors import EXIT_INTERRUPTED, Interrupted, OutputError, TlbenchError, UsageError

# forwarded run options that the baseline cells share with the training cells
_BASELINE_OPTIONS = ("--data", "--data-format", "--split-seed", "--device")


@dataclass(frozen=True)
class Cell:
    id: str
    kind: str  # run | baseline
    backbone: str
    recipe: str | None = None
    freeze: str | None = None
    seed: int | None = None

    def command(self, forwarded: list[str], baseline_args: list[str], out: Path) -> list[str]:
        base = [sys.executable, "-m", "tlbench"]
        if self.kind == "baseline":
            return [*base, "baseline", self.backbone, *baseline_args, "--out", str(out)]
        if (out / "checkpoint.pt").is_file():
            return [*base, "run", "--resume", str(out), "-q"]
        return [
            *base,
            "run",
            self.backbone,
            "--freeze",
            str(self.freeze),
            "--recipe",
            str(self.recipe),
            "--seed",
            str(self.seed),
            *forwarded,
            "--out",
            str(out),
            "-q",
        ]


@dataclass
class CellState:
    status: str = "pending"  # pending | running | finished | failed | invalid
    error: str | None = None
    exit_code: int | None = None
    attempts: int = 0
    seconds: float | None = None
    gpu: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def split_list(values: list[str] | None) -> list[str]:
    """'a,b' and repeated options alike -> ['a', 'b']."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text.replace("%", "pct"))


def expand_grid(
    backbones: list[str], freezes: list[str], recipes: list[str], seeds: list[int], baselines: bool
) -> list[Cell]:
    cells = [
        Cell(f"{_safe(b)}-{_safe(r)}-f{_safe(f)}-s{s}", "run", b, r, f, s)
        for b in backbones
        for r in recipes
        for f in freezes
        for s in seeds
    ]
    if baselines:
        cells += [Cell(f"{_safe(b)}-baseline", "baseline", b) for b in backbones]
    return cells


def check_cells(cells: list[Cell], pretrained: bool, weights: str | None) -> dict[str, str]:
    """Problems known before running anything: unknown backbones, freeze depths out of range."""
    from tlbench.models import backbone_layers, parse_freeze
    from tlbench.models.weights import pretrained_source

    problems: dict[str, str] = {}
    layers: dict[str, Any] = {}
    for cell in cells:
        try:
            if cell.backbone not in layers:
                layers[cell.backbone] = backbone_layers(cell.backbone)
            if cell.kind == "baseline":
                if not pretrained or weights is not None:
                    problems[cell.id] = (
                        "no baseline without the backbone's own pretrained ImageNet-1k weights"
                    )
                else:
                    pretrained_source(cell.backbone)
            else:
                parse_freeze(str(cell.freeze), layers[cell.backbone], backbone=cell.backbone)
        except TlbenchError as exc:
            problems[cell.id] = exc.one_line()
    return problems


def _error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if line.startswith("tlbench: error:"):
            return line.removeprefix("tlbench: error:").strip()
    return lines[-1][:300] if lines else "exited without output"


def _progress_of(run_dir: Path) -> tuple[int, float | None, float | None]:
    """(epochs done, last val top-1, mean epoch seconds) from a running cell's metrics.csv."""
    try:
        with (run_dir / "metrics.csv").open() as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return 0, None, None
    if not rows:
        return 0, None, None
    secs = [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")]
    return len(rows), float(rows[-1]["val_top1"]), (sum(secs) / len(secs) if secs else None)


class Sweep:
    """Runs the cells of one sweep folder, one at a time or one per GPU."""

    def __init__(
        self,
        folder: Path,
        cells: list[Cell],
        forwarded: list[str],
        baseline_args: list[str],
        epochs: int,
        gpus: list[str],
        manifest: dict[str, Any],
    ) -> None:
        self.folder = folder
        self.cells = cells
        self.forwarded = forwarded
        self.baseline_args = baseline_args
        self.epochs = epochs
        self.gpus = gpus
        self.manifest = manifest
        self.states: dict[str, CellState] = {}

    # -- files ----------------------------------------------------------------------------------

    def cell_dir(self, cell: Cell) -> Path:
        return self.folder / "cells" / cell.id

    def save_state(self) -> None:
        write_json(self.folder / "state.json", {cid: asdict(st) for cid, st in self.states.items()})

    def prepare(self, problems: dict[str, str]) -> None:
        check_writable(self.folder)
        path = self.folder / "manifest.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("forwarded") != self.manifest["forwarded"]:
                raise OutputError(
                    f"{self.folder} holds a sweep with other run options "
                    f"({' '.join(old.get('forwarded', [])) or 'none'})",
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
            self.states = {cid: CellState(**st) for cid, st in before.items()}  # cells of earlier runs
        for cell in self.cells:
            run_dir = self.cell_dir(cell)
            if cell.id in problems:
                self.states[cell.id] = CellState("invalid", error=problems[cell.id])
            elif (run_dir / "summary.json").is_file():
                self.states[cell.id] = CellState("finished")
            else:
                if run_dir.exists() and not (run_dir / "checkpoint.pt").is_file():
                    shutil.rmtree(run_dir)  # died before its first checkpoint: nothing to keep
                self.states[cell.id] = CellState("pending")
            self.states[cell.id].attempts = before.get(cell.id, {}).get("attempts", 0)
        self.save_state()

    # -- running --------------------------------------------------------------------------------

    def run(self, live: bool) -> dict[str, CellState]:
        todo = [c for c in self.cells if self.states[c.id].status == "pending"]
        slots: list[str | None] = list(self.gpus) or [None]
        running: dict[str | None, tuple[Cell, subprocess.Popen, float, Any]] = {}
        display = _Display(self, live)
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
        run_dir = self.cell_dir(cell)
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        log = (self.folder / "cells" / f"{cell.id}.log").open("a")
        log.write(f"--- {datetime.now().isoformat(timespec='seconds')} ---\n")
        log.flush()
        cmd = cell.command(self.forwarded, self.baseline_args, run_dir)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        running[slot] = (cell, proc, time.time(), log)
        state = self.states[cell.id]
        state.status, state.attempts, state.gpu, state.error = "running", state.attempts + 1, slot, None
        self.save_state()

    def _finish(self, cell: Cell, code: int, seconds: float) -> None:
        state = self.states[cell.id]
        state.exit_code, state.seconds = code, round(seconds, 1)
        if code == 0 and (self.cell_dir(cell) / "summary.json").is_file():
            state.status = "finished"
        else:
            state.status = "failed"
            state.error = _error_line(self.folder / "cells" / f"{cell.id}.log")
            if code == EXIT_INTERRUPTED:
                state.error = "interrupted (resumable)"
        self.save_state()


class _Display:
    """A live rich table of the cells in a terminal; a line per state change otherwise."""

    def __init__(self, sweep: Sweep, live: bool) -> None:
        self.sweep = sweep
        self.live = live and console().is_terminal
        self._live: Any = None
        self._seen: dict[str, str] = {}

    def __enter__(self) -> _Display:
        if self.live:
            from rich.live import Live

            self._live = Live(self._table({}), console=console(), refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table({}))
            self._live.__exit__(*exc)
        else:
            self._lines()

    def update(self, running: dict) -> None:
        if self._live is not None:
            self._live.update(self._table({cell.id: started for cell, _p, started, _l in running.values()}))
        else:
            self._lines()

    def _lines(self) -> None:
        for cell in self.sweep.cells:
            st = self.sweep.states[cell.id]
            if self._seen.get(cell.id) != st.status:
                self._seen[cell.id] = st.status
                why = f": {st.error}" if st.error else ""
                console().print(f"sweep: {cell.id} {st.status}{why}", soft_wrap=True, highlight=False)

    def _table(self, started: dict[str, float]) -> Any:
        from rich.table import Table

        table = Table(title=f"sweep {self.sweep.folder}", title_justify="left")
        for col in ("cell", "state", "epoch", "val top-1", "ETA", "note"):
            table.add_column(col)
        for cell in self.sweep.cells:
            st = self.sweep.states[cell.id]
            epoch = top1 = eta = ""
            if cell.kind == "run":
                done, acc, mean = _progress_of(self.sweep.cell_dir(cell))
                epoch = f"{done}/{self.sweep.epochs}" if done or st.status == "running" else ""
                top1 = f"{100 * acc:.2f} %" if acc is not None else ""
                if st.status == "running" and mean:
                    eta = f"{mean * max(0, self.sweep.epochs - done):.0f} s"
            color = {"finished": "green", "failed": "red", "invalid": "yellow", "running": "cyan"}.get(
                st.status, ""
            )
            state = f"[{color}]{st.status}[/]" if color else st.status
            table.add_row(cell.id, state, epoch, top1, eta, (st.error or "")[:80])
        return table


def parse_run_options(forwarded: list[str]) -> dict[str, Any]:
    """Check the forwarded run options with `tlbench run`'s own parser; return their values."""
    import typer

    from tlbench.cli import app

    command = typer.main.get_command(app)
    run_cmd = command.commands["run"]  # type: ignore[attr-defined]
    for reserved in ("--freeze", "--recipe", "--seed", "--out", "--resume"):
        if reserved in forwarded or any(a.startswith(reserved + "=") for a in forwarded):
            raise UsageError(
                f"{reserved} is set by the sweep", "use --freeze/--recipes/--seeds/--out of sweep"
            )
    try:
        ctx = run_cmd.make_context("run", ["placeholder", *forwarded], resilient_parsing=False)
    except Exception as exc:  # click's UsageError, whichever click Typer carries
        fmt = getattr(exc, "format_message", None)
        message = fmt() if callable(fmt) else str(exc)
        raise UsageError(f"bad run option for the sweep: {message}") from None
    return dict(ctx.params)


def baseline_args(forwarded: list[str]) -> list[str]:
    """The forwarded options a baseline cell understands (data and device), in order."""
    out: list[str] = []
    i = 0
    while i < len(forwarded):
        arg = forwarded[i]
        name = arg.split("=", 1)[0]
        if name in _BASELINE_OPTIONS:
            if "=" in arg:
                out.append(arg)
            elif i + 1 < len(forwarded):
                out += [arg, forwarded[i + 1]]
                i += 1
        elif name == "--skip-corrupt":
            out.append(arg)
        i += 1
    return out


def run_sweep(
    backbones: list[str],
    freezes: list[str],
    recipes: list[str],
    seeds: list[int],
    forwarded: list[str],
    *,
    out: Path | None,
    gpus: list[str],
    baselines: bool,
    dry_run: bool,
    progress: bool = True,
) -> tuple[Path, dict[str, CellState]]:
    """Expand, check, and run (or print) a sweep; return its folder and every cell's state."""
    from tlbench.train.recipes import get_recipe

    if not backbones:
        raise UsageError("--backbones is empty", "e.g. --backbones vgg19,resnet50")
    params = parse_run_options(forwarded)
    for r in recipes:
        get_recipe(r)
    epochs = params.get("epochs") or max(get_recipe(r).epochs for r in recipes)
    cells = expand_grid(backbones, freezes, recipes, seeds, baselines and params.get("pretrained", True))
    problems = check_cells(cells, params.get("pretrained", True), params.get("weights"))
    # The default folder is named by what the sweep is, so the same command continues the same sweep.
    key = json.dumps([backbones, freezes, recipes, seeds, baselines, forwarded], sort_keys=True)
    folder = out or Path("results/sweeps") / f"sweep-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    manifest = {
        "schema_version": 1,
        "created": datetime.now().isoformat(timespec="seconds"),
        "backbones": backbones,
        "freeze": freezes,
        "recipes": recipes,
        "seeds": seeds,
        "baselines": baselines,
        "forwarded": forwarded,
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
    sweep = Sweep(folder, cells, forwarded, baseline_args(forwarded), epochs, gpus, manifest)
    sweep.prepare(problems)
    states = sweep.run(live=progress)
    return folder, {c.id: states[c.id] for c in cells}
