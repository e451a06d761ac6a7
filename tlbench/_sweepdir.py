"""A sweep folder's files as the sweep writes them and the report reads them: each cell's
`CellState` in state.json, and the manifest's name and version.

A sweep folder (`tlbench.sweep`) holds `manifest.json` (the grid and the options every cell
shares), `state.json` (each cell's state by cell id, rewritten atomically as cells start and end)
and `cells/<id>/`, each a normal run directory (`tlbench.rundir`). This module is the part of that
layout that readers below the sweep need: the report lists the failed cells from here (such a cell
may have no run directory to show), so it never imports the sweep itself. Only `_io` and the
standard library are used here (and `errors`, for a damaged file).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tlbench._io import write_json

MANIFEST_VERSION = 2
"""2: the manifest holds `run_options` (run_config keyword arguments), not the forwarded argv."""

MANIFEST = "manifest.json"
STATES = "state.json"
TUNING = "tuning.json"
"""A tuned sweep's studies (`tlbench.sweep.tune`): each configuration's best values, trials, cost."""

ACTIVE = ("queued", "running")
"""The states of a cell whose process or job has not ended."""


@dataclass
class CellState:
    """One cell's entry in state.json: where it stands, and why it failed or waits."""

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


def _read_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object file of a sweep folder.

    Raises:
        OutputError: Unreadable, not UTF-8, not JSON, or not an object of objects (state.json).
    """
    from tlbench.errors import OutputError

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"
    except OSError as exc:
        problem = f"unreadable: {exc.strerror or exc}"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except ValueError as exc:
        problem = f"not JSON: {exc}"
    if problem is None and what == STATES and not all(isinstance(v, dict) for v in value.values()):
        problem = "a cell's entry is not an object"
    if problem is not None:
        raise OutputError(f"{path} is damaged ({problem})", fix)
    return value


def read_states(folder: Path) -> dict[str, Any]:
    """state.json of the sweep in `folder` as written (cell id -> its state's fields); {} before one.

    Raises:
        OutputError: state.json is damaged (the fix: move it away; the sweep rebuilds it).
    """
    path = folder / STATES
    if not path.is_file():
        return {}
    fix = (
        f"move it away (e.g. to {path.name}.bad) and run the same command again: the states are rebuilt "
        "from the cells' run directories (a cluster sweep's queued jobs are then forgotten)"
    )
    return _read_object(path, STATES, fix)


def read_manifest(folder: Path) -> dict[str, Any]:
    """manifest.json of the sweep in `folder`.

    Raises:
        OutputError: manifest.json is damaged.
    """
    fix = "restore it, or run the sweep with another --out (the finished cells stay in this folder)"
    return _read_object(folder / MANIFEST, MANIFEST, fix)


def write_states(folder: Path, states: dict[str, CellState]) -> None:
    """Rewrite state.json (atomically)."""
    write_json(folder / STATES, {cid: asdict(st) for cid, st in states.items()})


def sweep_of(run_dir: Path) -> Path | None:
    """The sweep folder a run directory is a cell or a tuning trial of (`<sweep>/cells/<id>`,
    `<sweep>/trials/<id>`), or None."""
    folder = Path(run_dir).parent.parent
    in_sweep = Path(run_dir).parent.name in ("cells", "trials") and (folder / MANIFEST).is_file()
    return folder if in_sweep else None


def failed_cells(paths: list[Path]) -> list[tuple[Path, str, CellState]]:
    """The failed or invalid cells of the sweeps under `paths`: (sweep folder, cell id, state).

    Such a cell may have no run directory to show, so a report lists it from here.
    """
    found = []
    for root in paths:
        for state_file in sorted(Path(root).rglob(STATES)) if Path(root).is_dir() else []:
            if not (state_file.parent / MANIFEST).is_file():
                continue
            try:
                states = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            for cell, values in states.items() if isinstance(states, dict) else ():
                if not isinstance(values, dict):
                    continue
                state = CellState.from_dict(values)
                if state.status in ("failed", "invalid"):
                    found.append((state_file.parent, cell, state))
    return found
