"""Model step speed: tlbench's train step against a plain PyTorch loop, and inference.

A small backbone on synthetic input already on the device (resnet18; 64 px, batch 16 on the CPU,
224 px, batch 64 with `--device cuda`). The tlbench step is `tlbench.train.step.TrainStep`, the
step `tlbench run` executes (autocast forward, cross-entropy + the Keras L2 term, zero_grad,
backward, SGD step, scheduler step, the on-device loss and accuracy sums); the plain loop does the
same work written by hand on the same model. Target: tlbench's step is no slower than the plain
loop (speed-up >= ~1.0x). images/s is in each benchmark's `extra_info` and, with `--record`, in the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.conftest import record

BACKBONE = "resnet18"


@pytest.fixture(scope="module")
def bench(device: str) -> Any:
    from tlbench.bench import BenchOptions
    from tlbench.bench.measure import BackboneBench

    gpu = device.startswith("cuda")
    options = BenchOptions(
        device=device,
        batch_size=64 if gpu else 16,
        image_size=224 if gpu else 64,
        amp="bf16" if gpu else "off",
        channels_last=gpu,
    )
    return BackboneBench(BACKBONE, options)


def _label(bench: Any) -> str:
    o = bench.options
    return f"{BACKBONE} {o.image_size}px b{o.batch_size} {bench.device.type}"


def _images_per_sec(benchmark: Any, bench: Any, one_batch: Callable[[], object], train: bool) -> float:
    """Time `one_batch` (synchronised) after 3 warm-up calls; images/s at the median round."""
    from tlbench import runtime

    def step() -> None:
        one_batch()
        runtime.sync(bench.device)

    bench.model.train(train)
    try:
        for _ in range(3):
            step()
        benchmark.pedantic(step, rounds=20 if bench.device.type == "cuda" else 5, iterations=1)
    finally:
        bench.model.train()
    ips = bench.options.batch_size / benchmark.stats.stats.median
    benchmark.extra_info["images_per_sec"] = ips
    return ips


def test_train_step_tlbench(benchmark, bench: Any) -> None:
    x, y = bench.inputs(bench.options.batch_size)
    step = bench.train_step(bench.options.batch_size)
    ips = _images_per_sec(benchmark, bench, lambda: step(x, y), train=True)
    record("train step", f"tlbench step ({_label(bench)})", ips, notes="tlbench run's TrainStep")


def test_train_step_plain_loop(benchmark, bench: Any) -> None:
    from tlbench.bench.reference import plain_train_step

    x, y = bench.inputs(bench.options.batch_size)
    state = bench.plain_state()
    ips = _images_per_sec(benchmark, bench, lambda: plain_train_step(state, x, y), train=True)
    notes = "same model and work, hand-written"
    record("train step", f"plain PyTorch loop ({_label(bench)})", ips, baseline=True, notes=notes)


def test_infer_step(benchmark, bench: Any) -> None:
    from tlbench.bench.measure import infer_step

    x, _ = bench.inputs(bench.options.batch_size)
    ips = _images_per_sec(
        benchmark, bench, lambda: infer_step(bench.runner, x, bench.device, bench.amp_dtype), train=False
    )
    record("infer", f"tlbench inference ({_label(bench)})", ips, baseline=True, notes="no_grad forward")
