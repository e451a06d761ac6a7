"""`tlbench sweep`: plan the grid, then print it (dry run), show its cells' states, or run it.

    plan = plan_sweep(["vgg19", "resnet50"], ["none", "all"], ["keras-vgg19"], [0, 1], {"epochs": 5},
                      out=None, gpus=["0", "1"], baselines=True)
    dry_run_sweep(plan)                     # the grid and its checks: nothing runs, nothing is written
    sweep_status(plan)                      # each cell's state now, from the folder's own executor
    states = start_sweep(plan, wait=False)  # local processes, or a cluster job array (wait: follow it)

`plan_sweep` is cheap: it checks the request, expands the grid and builds each cell's config. Each
command then checks the cells (which imports torch and timm; a local run starts its zygote first,
so both happen at once) and names the cells that will not run. `run_sweep` is the three behind
flags, as the CLI calls it. The local runner is `runner.Sweep`, the cluster one `cluster.ClusterSweep`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from tlbench._console import console, plain, say
from tlbench._io import FolderLock
from tlbench._sweepdir import MANIFEST, MANIFEST_VERSION, CellState, read_manifest
from tlbench.config.eval import EvalOptions
from tlbench.config.run import parse_select
from tlbench.config.tuning import RaceOptions, TuneOptions
from tlbench.errors import OutputError, TlbenchError, UsageError
from tlbench.sweep.cluster import ClusterOptions, ClusterSweep
from tlbench.sweep.evaluate import eval_options, evaluate_sweep
from tlbench.sweep.grid import (
    Cell,
    cell_dir,
    check_cells,
    check_shared,
    drop_duplicates,
    expand_grid,
    run_option_names,
)
from tlbench.sweep.process import fork_cells
from tlbench.sweep.runner import Sweep
from tlbench.sweep.tune import require_optuna, tune_sweep, tuning_manifest
from tlbench.sweep.zygote import Zygote


@dataclass(frozen=True)
class SweepPlan:
    """A sweep before anything runs: its grid (repeats dropped), its folder, each cell's config.

    Attributes:
        folder: The sweep folder.
        backbones: The grid's backbones.
        freezes: Its freeze depths.
        recipes: Its recipe names.
        seeds: Its seeds.
        run_options: `run_config` keyword arguments shared by every cell.
        baselines: A zero-training baseline cell per backbone was asked for.
        gpus: The local GPU slots (`CUDA_VISIBLE_DEVICES`); empty: one cell at a time.
        executor: `local`, `slurm` or `submitit-local`.
        cluster: The jobs' resources of a cluster executor.
        cells: Every cell of the grid.
        configs: Cell id -> what its worker runs (`Cell.config`).
        problems: Cell id -> why it will not run.
        tuning: Tune each configuration first (`tlbench.sweep.tune`); None: the recipes' values.
        race: Stop the cells that fall clearly behind (`tlbench.sweep.race`); None: no race.
        recipe_files: Each recipe file of the grid -> the SHA-256 of its content: an edited file
            is another sweep (another default folder; in the same `--out`, refused).
        evaluation: The `tlbench eval` of every backbone after the cells, into `<folder>/eval`
            (`tlbench.sweep.evaluate`); None: none.
    """

    folder: Path
    backbones: list[str]
    freezes: list[str]
    recipes: list[str]
    seeds: list[int]
    run_options: dict[str, Any]
    baselines: bool
    gpus: list[str]
    executor: str
    cluster: ClusterOptions | None
    cells: list[Cell]
    configs: dict[str, dict[str, Any]]
    problems: dict[str, str]
    tuning: TuneOptions | None = None
    race: RaceOptions | None = None
    recipe_files: dict[str, str] = field(default_factory=dict)
    evaluation: EvalOptions | None = None

    @property
    def epochs(self) -> int:
        """The most epochs of any training cell (0 without one)."""
        runs = (c["config"]["recipe"]["epochs"] for c in self.configs.values() if c["kind"] == "run")
        return max(runs, default=0)

    def manifest(self) -> dict[str, Any]:
        """manifest.json as this sweep writes it, `created` now."""
        return {
            "schema_version": MANIFEST_VERSION,
            "created": datetime.now().isoformat(timespec="seconds"),
            "backbones": self.backbones,
            "freeze": self.freezes,
            "recipes": self.recipes,
            "seeds": self.seeds,
            "baselines": self.baselines,
            "run_options": self.run_options,
            "gpus": self.gpus,
            "executor": self.executor,
            "cluster": asdict(self.cluster) if self.cluster is not None else None,
            "cells": [asdict(c) for c in self.cells],
            "tuning": tuning_manifest(self.tuning),
            "race": asdict(self.race) if self.race is not None else None,
            "recipe_files": self.recipe_files,
            "evaluation": self.evaluation.to_dict() if self.evaluation is not None else None,
        }


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
    tuning: TuneOptions | None = None,
    race: RaceOptions | None = None,
    evaluation: EvalOptions | None = None,
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
        dry_run: Print the grid and its checks; run nothing, write nothing (`dry_run_sweep`).
        progress: A live table (in a terminal) or a line per state change.
        executor: `local` (one process per cell and GPU slot), `slurm` (a Slurm job array; returns
            once submitted), or `submitit-local` (the cluster path with local processes, for tests).
        cluster: The `tlbench.sweep.cluster.ClusterOptions` of a cluster executor.
        status: Print each cell's state (from the cluster and its run directory); run nothing.
            The folder's own executor is asked, whatever `executor` says (`sweep_status`).
        wait: A cluster sweep: stay until every cell has ended, showing their states.
        tuning: Tune each configuration's recipe values first, the same budget for each
            (`tlbench.sweep.tune`); needs a selection split (`select`).
        race: Stop cells that fall significantly behind the leader (`tlbench.sweep.race`).
        evaluation: `--protocols` (and the episodes' options): evaluate every backbone's frozen
            features after the cells, into `<folder>/eval` (`tlbench.sweep.evaluate`).

    Raises:
        UsageError: No backbone, an unknown recipe, run option or executor; a cluster executor
            without `cluster`, or with `evaluation`; tuning or a race without a selection split.
        OutputError: The folder holds a sweep with other run options, is in use by another sweep
            (exit 6, naming its pid), or is not writable.
    """
    plan = plan_sweep(
        backbones,
        freezes,
        recipes,
        seeds,
        run_options,
        out=out,
        gpus=gpus,
        baselines=baselines,
        executor=executor,
        cluster=cluster,
        tuning=tuning,
        race=race,
        evaluation=evaluation,
    )
    if dry_run:
        return plan.folder, dry_run_sweep(plan)
    if status:
        return plan.folder, sweep_status(plan)
    return plan.folder, start_sweep(plan, progress=progress, wait=wait)


def plan_sweep(
    backbones: list[str],
    freezes: list[str],
    recipes: list[str],
    seeds: list[int],
    run_options: dict[str, Any],
    *,
    out: Path | None,
    gpus: list[str],
    baselines: bool,
    executor: str = "local",
    cluster: ClusterOptions | None = None,
    tuning: TuneOptions | None = None,
    race: RaceOptions | None = None,
    evaluation: EvalOptions | None = None,
) -> SweepPlan:
    """Check the request, drop repeated values, expand the grid and build each cell's config.

    Args:
        backbones, freezes, recipes, seeds, run_options, out, gpus, baselines, executor, cluster,
            tuning, race, evaluation: As `run_sweep`'s.

    Returns:
        The plan; a cell whose config cannot be built is among its `problems`.

    Raises:
        UsageError: No backbone, an unknown recipe, run option or executor; a cluster executor
            without `cluster`, or with `evaluation`.
    """
    from tlbench.config import get_recipe
    from tlbench.config.recipe_file import is_recipe_file

    _check_request(backbones, run_options, executor, cluster)
    _check_selection(run_options, tuning, race)
    backbones, freezes, recipes, seeds = _drop_repeats(backbones, freezes, recipes, seeds)
    for r in recipes:
        get_recipe(r)
    pretrained = run_options.get("pretrained", True)
    cells = expand_grid(backbones, freezes, recipes, seeds, baselines and pretrained)
    # The default folder is named by what the sweep is, so the same command continues the same sweep.
    extra = [tuning_manifest(tuning)] if tuning is not None else []  # untuned sweeps keep their folders
    extra += [asdict(race)] if race is not None else []
    recipe_files = {r: _content_hash(r) for r in recipes if is_recipe_file(r)}
    extra += [recipe_files] if recipe_files else []  # a sweep of named recipes keeps its folder
    key = json.dumps([backbones, freezes, recipes, seeds, baselines, run_options, *extra], sort_keys=True)
    folder = out or Path("results/sweeps") / f"sweep-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    evaluation = eval_options(evaluation, run_options, seeds, folder, executor, backbones)
    configs: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for cell in cells:
        try:
            configs[cell.id] = cell.config(run_options, cell_dir(folder, cell))
        except TlbenchError as exc:
            problems[cell.id] = exc.one_line()
    return SweepPlan(
        folder=folder,
        backbones=backbones,
        freezes=freezes,
        recipes=recipes,
        seeds=seeds,
        run_options=run_options,
        baselines=baselines,
        gpus=gpus,
        executor=executor,
        cluster=cluster,
        cells=cells,
        configs=configs,
        problems=problems,
        tuning=tuning,
        race=race,
        recipe_files=recipe_files,
        evaluation=evaluation,
    )


def _content_hash(path: str) -> str:
    """The SHA-256 of a recipe file's bytes (read just after `get_recipe` read it)."""
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def dry_run_sweep(plan: SweepPlan) -> dict[str, CellState]:
    """Check the cells and print the grid with each cell's check; run nothing, write nothing.

    Returns:
        Each cell's state if it ran now: pending, or invalid.
    """
    plan = _checked(plan)
    from rich.table import Table

    table = Table(title=f"{len(plan.cells)} cell(s), {plan.epochs} epoch(s) each (dry run: nothing started)")
    for col in ("cell", "kind", "backbone", "recipe", "freeze", "seed", "check"):
        table.add_column(col)
    for c in plan.cells:
        row = (c.id, c.kind, c.backbone, c.recipe, c.freeze, c.seed, plan.problems.get(c.id, "ok"))
        table.add_row(*(plain("" if v is None else v) for v in row))
    console().print(table)
    return {c.id: CellState("invalid" if c.id in plan.problems else "pending") for c in plan.cells}


def sweep_status(plan: SweepPlan) -> dict[str, CellState]:
    """Check the cells and print each one's state now; run nothing. The folder's own executor is
    asked (its manifest's), whatever the plan's is.

    Raises:
        OutputError: The folder holds no sweep.
    """
    plan = _checked(plan)
    sweep = _sweep(plan, _saved_manifest(plan.folder), wait=False)
    states = sweep.show_status(plan.problems)
    if plan.tuning is not None:
        from tlbench.sweep.tune import study_key
        from tlbench.sweep.tune_cluster import say_tuning

        keys = list(dict.fromkeys(study_key(c) for c in plan.cells if c.kind == "run"))
        say_tuning(plan.folder, plan.tuning, keys)
    return {c.id: states[c.id] for c in plan.cells}


def start_sweep(plan: SweepPlan, *, progress: bool = True, wait: bool = False) -> dict[str, CellState]:
    """Check the cells and run the sweep in its folder: locally, until every cell has ended, or as a
    cluster job array, until it is submitted (`wait`: until every cell has ended).

    Args:
        plan: From `plan_sweep`.
        progress: A live table (in a terminal) or a line per state change.
        wait: A cluster sweep: stay until every cell has ended, showing their states.

    Raises:
        OutputError: The folder holds a sweep with other run options, is in use by another sweep
            (exit 6, naming its pid), or is not writable.
    """
    # A local sweep's zygote imports torch and timm while the cells are checked (here, importing
    # them too); each cell is then a fork of it (`tlbench.sweep.zygote`).
    zygote = Zygote() if plan.executor == "local" and fork_cells() else None
    try:
        _check_folder(plan.folder)
        plan = _checked(plan)
        check_shared(plan.run_options, plan.backbones, plan.folder)
        sweep = _sweep(plan, plan.manifest(), wait)
        sweep.zygote = zygote
        # One sweep per folder: a second one would start every cell again, and delete what this one starts.
        lock = FolderLock(plan.folder, "sweep folder").acquire()
        try:
            sweep.prepare(plan.problems)
            if plan.race is not None:
                from tlbench.sweep.race import Race

                sweep.race = Race(plan.race)
            states = sweep.states
            if _tuned(sweep, plan):
                states = sweep.run(live=progress)
            if plan.evaluation is not None:  # --protocols: every backbone, after the cells
                evaluate_sweep(plan.backbones, plan.evaluation, progress=progress)
        finally:
            lock.release()
        return {c.id: states[c.id] for c in plan.cells}
    finally:
        if zygote is not None:
            zygote.close()


def _tuned(sweep: Sweep, plan: SweepPlan) -> bool:
    """Tune the sweep's configurations first, where it asks to: here, or as cluster tasks. False
    while a cluster sweep's trials wait or run (its cells are submitted once they have ended)."""
    if plan.tuning is None:
        return True
    if isinstance(sweep, ClusterSweep):
        from tlbench.sweep.tune_cluster import tune_on_cluster

        return tune_on_cluster(sweep, plan.run_options, plan.tuning)
    tune_sweep(sweep, plan.run_options, plan.tuning)
    return True


def _check_request(
    backbones: list[str], run_options: dict[str, Any], executor: str, cluster: ClusterOptions | None
) -> None:
    if not backbones:
        raise UsageError("--backbones is empty", "e.g. --backbones vgg19,resnet50")
    if executor not in ("local", "slurm", "submitit-local"):
        raise UsageError(f"--executor {executor!r} is not one of local, slurm")
    if executor != "local" and cluster is None:
        raise UsageError(f"--executor {executor} needs the cells' resources", "give at least --slurm-time")
    unknown = sorted(set(run_options) - set(run_option_names()))
    if unknown:
        raise UsageError(f"not a run option of a sweep: {', '.join(unknown)}")


def _check_selection(
    run_options: dict[str, Any], tuning: TuneOptions | None, race: RaceOptions | None
) -> None:
    """Tuning and races decide on a selection split, never on the validation images reported."""
    if tuning is not None:
        require_optuna()
    wanted = [flag for flag, on in (("--tune", tuning), ("--race", race and race.race)) if on]
    if wanted and parse_select(str(run_options.get("select", "none"))) is None:
        raise UsageError(
            f"{' and '.join(wanted)} decide on a selection split, and --select is none",
            "give --select 10% (or N images per class)",
        )


def _drop_repeats(
    backbones: list[str], freezes: list[str], recipes: list[str], seeds: list[int]
) -> tuple[list[str], list[str], list[str], list[int]]:
    """The grid with each value once; the repeated ones are named on the console."""
    backbones, repeated_backbones = drop_duplicates(backbones)
    freezes, repeated_freezes = drop_duplicates(freezes)
    recipes, repeated_recipes = drop_duplicates(recipes)
    seeds, repeated_seeds = drop_duplicates(seeds)
    repeated: dict[str, list[str] | list[int]] = {
        "backbones": repeated_backbones,
        "freeze depths": repeated_freezes,
        "recipes": repeated_recipes,
        "seeds": repeated_seeds,
    }
    dropped = "; ".join(f"{what} {', '.join(map(str, vs))}" for what, vs in repeated.items() if vs)
    if dropped:
        say(f"sweep: each cell runs once; dropped the repeated {dropped}", soft_wrap=True)
    return backbones, freezes, recipes, seeds


def _checked(plan: SweepPlan) -> SweepPlan:
    """The plan with the cells' own checks (`check_cells`) among its problems, each one printed."""
    checked = check_cells(
        [c for c in plan.cells if c.id not in plan.problems],
        plan.run_options.get("pretrained", True),
        plan.run_options.get("weights"),
    )
    problems = plan.problems | checked
    for cid, why in problems.items():
        say((f"sweep: {cid} will not run", "yellow"), f": {why}", soft_wrap=True)
    return replace(plan, problems=problems)


def _saved_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the sweep in `folder` (`executor` local unless it says otherwise).

    Raises:
        OutputError: The folder holds no sweep.
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise OutputError(f"{folder} holds no sweep yet", "run the same command without --status")
    return {"executor": "local"} | read_manifest(folder)


def _check_folder(folder: Path) -> None:
    """Refuse a sweep folder that is a run directory: its files would be mixed with the sweep's.

    Raises:
        OutputError: `folder` holds a run's config.json or summary.json and no sweep.
    """
    from tlbench.rundir import CONFIG, SUMMARY

    if not (folder / MANIFEST).is_file() and any((folder / f).is_file() for f in (CONFIG, SUMMARY)):
        raise OutputError(
            f"{folder} is a run directory, not a sweep folder", "give the sweep another --out (a new folder)"
        )


def _sweep(plan: SweepPlan, manifest: dict[str, Any], wait: bool) -> Sweep:
    """The sweep of the executor that `manifest` names (`wait`: a cluster sweep's)."""
    if manifest["executor"] == "local":
        return Sweep(plan.folder, plan.cells, plan.configs, plan.epochs, manifest["gpus"], manifest)
    sweep = ClusterSweep(plan.folder, plan.cells, plan.configs, plan.epochs, [], manifest)
    sweep.wait = wait
    return sweep
