"""What a sweep cell costs around its training: process start -> first batch, last batch -> exit.

One small cell (resnet18 from scratch, 32 px, `synthetic:10x60@32`, one epoch, on the CPU), with a
warm decode cache (one untimed run first), launched two ways:

- `python -m tlbench.train.worker CELL.json`, a fresh interpreter (how every local sweep cell
  started before the zygote, and how Slurm cells still start);
- a fork of the zygote (`tlbench.sweep.zygote`), how a local sweep starts its cells now. The
  zygote's own start (its imports, paid once per sweep, while the sweep checks its cells) is
  measured apart.

The parent takes `t0 = time.time()` just before launching and `t_exit` right after the process is
reaped; the cell marks `first_batch` and `last_batch` in a `TLBENCH_TIMELINE` file (`time.time()`,
one clock). Reported: the median over rounds. Target (the issue): <= 3 s each on this CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import record_seconds

ROUNDS = 3
START, END = "start -> first batch", "last batch -> exit"


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The cell file, its environment (own data and cache folders) and a warm decode cache."""
    from tlbench.config import run_config
    from tlbench.train.worker import read_cell

    root = tmp_path_factory.mktemp("cell")
    out = root / "run"
    config = run_config(
        "resnet18",
        "keras-vgg19",
        freeze="none",
        data="synthetic:10x60@32",
        image_size=32,
        epochs=1,
        pretrained=False,
        device="cpu",
        out=out,
    )
    path = root / "cell.json"
    path.write_text(json.dumps({"kind": "run", "config": config.to_dict(), "resume": False}))
    read_cell(path)
    env = dict(os.environ, TLBENCH_DATA=str(root / "data"), TLBENCH_CACHE=str(root / "cache"))
    env["HF_HUB_OFFLINE"] = "1"
    info = {"path": path, "out": out, "env": env, "root": root}
    code = _plain(info, root / "warm.log")()  # builds the synthetic set and its decode cache
    assert code == 0, (root / "warm.log").read_text()
    yield info


def _plain(cell: dict[str, Any], log: Path) -> Callable[[], int]:
    """Start the cell as its own interpreter; the returned call waits for its exit status."""
    from tlbench.sweep.runner import worker_command

    with log.open("a") as out:
        proc = subprocess.Popen(
            worker_command(cell["path"]), stdout=out, stderr=subprocess.STDOUT, env=cell["env"]
        )
    return proc.wait


def _round(cell: dict[str, Any], launch: Callable[[dict[str, Any], Path], Callable[[], int]], n: int) -> dict:
    """One launch of the cell: its two overheads in seconds (from the parent's clock and the cell's)."""
    from tlbench import _timeline

    shutil.rmtree(cell["out"], ignore_errors=True)
    timeline = cell["root"] / f"timeline-{launch.__name__}-{n}.jsonl"
    cell["env"]["TLBENCH_TIMELINE"] = str(timeline)
    log = cell["root"] / f"{launch.__name__}-{n}.log"
    t0 = time.time()
    wait = launch(cell, log)
    code = wait()
    t_exit = time.time()
    assert code == 0, log.read_text()
    events = {e["event"]: e["t"] for e in _timeline.read(timeline)}
    return {START: events["first_batch"] - t0, END: t_exit - events["last_batch"]}


def _measure(benchmark: Any, cell: dict[str, Any], launch: Callable) -> dict[str, float]:
    """`ROUNDS` launches timed by pytest-benchmark (the whole cell); the medians of the overheads."""
    rounds: list[dict[str, float]] = []
    benchmark.pedantic(lambda: rounds.append(_round(cell, launch, len(rounds))), rounds=ROUNDS, iterations=1)
    medians = {key: statistics.median(r[key] for r in rounds) for key in (START, END)}
    benchmark.extra_info.update(medians)
    benchmark.extra_info["rounds"] = rounds
    return medians


def test_cell_as_its_own_interpreter(benchmark, cell: dict[str, Any]) -> None:
    medians = _measure(benchmark, cell, _plain)
    notes = "python -m tlbench.train.worker CELL.json"
    record_seconds("sweep cell overhead", "own interpreter", medians, notes=notes, baseline=True)


@pytest.fixture(scope="module")
def zygote(cell: dict[str, Any]) -> Iterator[tuple[Any, float]]:
    """A zygote as a local sweep starts one, and the seconds until its first fork could start."""
    from tlbench.sweep.zygote import Zygote

    old = dict(os.environ)
    os.environ.update(cell["env"])  # the zygote starts with the sweep's environment
    try:
        t0 = time.time()
        zyg = Zygote()
        first = zyg.spawn([sys.executable, "-c", "pass"], cell["root"] / "zygote.log", cell["env"])
        assert first is not None and first.wait(timeout=60) == 0
        ready = time.time() - t0
    finally:
        os.environ.clear()
        os.environ.update(old)
    yield zyg, ready
    zyg.close()


def test_cell_forked_from_the_zygote(benchmark, cell: dict[str, Any], zygote: tuple[Any, float]) -> None:
    from tlbench.sweep.runner import worker_command

    zyg, ready = zygote

    def forked(cell: dict[str, Any], log: Path) -> Callable[[], int]:
        proc = zyg.spawn(worker_command(cell["path"]), log, dict(cell["env"]))
        assert proc is not None, "the zygote died"
        return proc.wait

    medians = _measure(benchmark, cell, forked)
    notes = f"how a local sweep starts cells; the zygote's own start, once per sweep: {ready:.1f} s"
    record_seconds("sweep cell overhead", "fork of the zygote", medians, notes=notes, zygote_start=ready)
