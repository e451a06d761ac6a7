"""Races: on a grid with clear losers, `--race` reaches the full grid's winner for at most 60 % of its
device-seconds (issue 18).

The grid: timm's test_resnet from scratch on `synthetic:4x240@32` (4 classes; 150 training, 50
selection and 40 validation images per class with `--select 25%`), 32 px, batch 16, no augmentation,
SGD with cosine to 0 over EPOCHS epochs, fp32, one thread, one seed; two recipes x two freeze depths.
Best selection top-1 of each cell in the full grid (12 epochs, CPU; after epoch 1 in brackets):

- `keras-lr2e-2` (keras-vgg19 with lr 2e-2, a recipe file), freeze none: 0.79 (0.56), the winner;
- the same with `--freeze 4` (only layer4 and the head train): 0.73 (0.25);
- keras-vgg19 itself (lr 1e-4, far too small for this model from scratch): 0.60 (0.27) with freeze
  none, 0.43 (0.25) with freeze 4.

The sweep runs ROUNDS times without `--race` and as often with `--race --race-after 1` (p < 0.01),
each in its own folder with the same data and decode cache, its cells one at a time (one slot: the
CPU, or one GPU). Round 0 lists the winner first, round 1 last (`ORDERS`), each kind of sweep first
in turn. A cell's device-seconds are its summary.json's `device_seconds` (its wall time from the
start of training to its summary, set-up and final evaluation included, x the devices it held); a
sweep's are their sum over its cells. The winner is the finished cell with the highest selection
top-1 (`best_select_top1`). Asserted: every sweep's winner, in either order, is the one above; with
the winner first, the raced sweep's device-seconds are at most 60 % of the full one's.

Measured (2-core Intel Xeon, one thread, 2026-12-05): winner first, 44 % (the three losers stopped
after epoch 2-3, `behind keras-lr2e-2.yaml/test_resnet fnone by 27.0 pts, p=3.7e-12 at epoch 2`);
winner last, 104 %: nothing stopped, rightly, since each cell was judged at its own epoch against
cells that were worse there. A race saves where good cells run early: cells run one at a time, and
a cell is only ever compared with what the others had reached by the same epoch (`tlbench.sweep.race`).
Stopped cells ran 3 epochs, not 2: the sweep looks at the race once a second and a cell reads its
stop request once a second, against epochs of 0.5-1 s here.

    .venv/bin/pytest benchmarks/test_race.py -s            # add --device cuda for one GPU
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import record_seconds

DATA = "synthetic:4x240@32"
EPOCHS = 12
ROUNDS = 2
"""Each sweep runs this often (1 or 2): the winner first, then last."""
TARGET = 0.6
"""The raced sweep's device-seconds may be at most this share of the full grid's."""

WINNER = "test_resnet-keras-lr2e-2.yaml-fnone-s0"


def _recipe_file(folder: Path) -> Path:
    """keras-vgg19 with lr 2e-2 instead of 1e-4, as a recipe file (the grid's winning recipe)."""
    import yaml

    from tlbench.config.recipes import RECIPES

    fields = asdict(RECIPES["keras-vgg19"]) | {"name": "keras-lr2e-2", "lr": 2e-2}
    fields["summary"] = "keras-vgg19 with lr 2e-2 (an lr that suits test_resnet from scratch)"
    del fields["search"]
    path = folder / "keras-lr2e-2.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def _tlbench(root: Path, *args: str) -> float:
    """Run `tlbench ARGS` in `root` (the recipe file's folder), with the data and cache under it, on
    one thread; its wall seconds."""
    env = dict(os.environ, TLBENCH_DATA=str(root / "data"), TLBENCH_CACHE=str(root / "cache"))
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    env["XDG_CACHE_HOME"] = str(root / "xdg")  # the convolution probes' verdicts
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tlbench", *args], env=env, cwd=root, capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return time.perf_counter() - t0


ORDERS = (("keras-lr2e-2.yaml,keras-vgg19", "none,4"), ("keras-vgg19,keras-lr2e-2.yaml", "4,none"))
"""The grid's order in round 0 (the winner first) and round 1 (the winner last)."""


def _sweep(root: Path, name: str, device: str, race: list[str], order: int) -> tuple[dict[str, Any], float]:
    """Run the grid in `root/name`: (each cell's summary.json and state, the sweep's wall seconds)."""
    out = root / name
    recipes, freezes = ORDERS[order]
    grid = ["--backbones", "test_resnet", "--recipes", recipes, "--freeze", freezes]
    grid += ["--seeds", "0", "--no-baseline", "--no-pretrained", "--device", device, "--amp", "off"]
    run = ["--data", DATA, "--image-size", "32", "--batch-size", "16", "--aug", "none", "--select", "25%"]
    run += ["--schedule", "cosine", "--epochs", str(EPOCHS)]
    seconds = _tlbench(root, "sweep", *grid, *run, *race, "--out", str(out))
    cells = {}
    for cid, state in json.loads((out / "state.json").read_text()).items():
        summary = json.loads((out / "cells" / cid / "summary.json").read_text())
        cells[cid] = {"state": state, "summary": summary}
    return cells, seconds


def _winner(cells: dict[str, Any]) -> str:
    """The finished cell with the highest selection top-1."""
    finished = {cid: c for cid, c in cells.items() if c["state"]["status"] == "finished"}
    return max(finished, key=lambda cid: finished[cid]["summary"]["best_select_top1"])


def _device_seconds(cells: dict[str, Any]) -> float:
    return sum(c["summary"]["device_seconds"] for c in cells.values())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, device: str) -> Path:
    """A folder with the recipe file, the synthetic set and its decode cache (one untimed run)."""
    root = tmp_path_factory.mktemp("race")
    _recipe_file(root)
    warm = ["test_resnet", "--freeze", "none", "--no-pretrained", "--epochs", "1", "--data", DATA]
    warm += ["--image-size", "32"]
    _tlbench(root, "run", *warm, "--select", "25%", "--device", device, "--out", str(root / "warm"))
    return root


def test_race_reaches_the_winner_for_at_most_60_percent(benchmark: Any, root: Path, device: str) -> None:
    sweeps: dict[str, list[tuple[dict[str, Any], float]]] = {"full": [], "raced": []}
    race = {"full": [], "raced": ["--race", "--race-after", "1"]}

    def measure() -> None:
        for n, order in enumerate((("full", "raced"), ("raced", "full"))[:ROUNDS]):
            for kind in order:  # each first in turn: a load that drifts weighs on both alike
                sweeps[kind].append(_sweep(root, f"{kind}-{n}", device, race[kind], order=n))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    total = {kind: sum(_device_seconds(cells) for cells, _ in runs) for kind, runs in sweeps.items()}
    share = _device_seconds(sweeps["raced"][0][0]) / _device_seconds(sweeps["full"][0][0])  # winner first
    lines = _lines(sweeps, share, device)
    print("\n".join(lines))
    group = f"race: test_resnet 2 recipes x 2 freeze, {EPOCHS} epochs, {device}, {ROUNDS} round(s)"
    for kind, name in (("full", "full grid"), ("raced", "--race --race-after 1")):
        cells = [c for run, _ in sweeps[kind] for c in run.values()]
        stopped = sum(c["state"]["status"] == "stopped early" for c in cells)
        winners = ", ".join(sorted({_winner(run) for run, _ in sweeps[kind]}))
        seconds = {"device-seconds": total[kind], "sweep wall": sum(wall for _, wall in sweeps[kind])}
        notes = (
            f"{total[kind] / total['full']:.0%} of full; winner {winners}; {stopped} of {len(cells)} stopped"
        )
        record_seconds(group, name, seconds, notes=notes)
    benchmark.extra_info.update(share=share, device_seconds=total)

    assert all(_winner(run) == WINNER for runs in sweeps.values() for run, _ in runs), lines
    assert share <= TARGET, lines


def _lines(sweeps: dict[str, list[tuple[dict[str, Any], float]]], share: float, device: str) -> list[str]:
    """Per cell and round: its device-seconds, epochs and selection top-1, full and raced."""
    lines = [
        f"\nrace on {device}, {EPOCHS} epochs, {ROUNDS} rounds: raced / full device-seconds = {share:.2f}"
    ]
    for n, ((full, _), (raced, _)) in enumerate(zip(sweeps["full"], sweeps["raced"], strict=True)):
        lines.append(f"round {n}: raced / full = {_device_seconds(raced) / _device_seconds(full):.2f}")
        for cid in full:
            f, r = full[cid]["summary"], raced[cid]["summary"]
            state = raced[cid]["state"]
            lines.append(
                f"  {cid}: full {f['device_seconds']:.1f} s, {f['epochs']} ep, "
                f"select {f['best_select_top1']:.3f} | raced {r['device_seconds']:.1f} s, {r['epochs']} ep, "
                f"{state['status']} {state.get('note') or ''}"
            )
    return lines
