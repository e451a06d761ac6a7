"""Model step speed: tlbench's train step against a plain PyTorch loop, and inference.

A small backbone on synthetic input already on the device (resnet18; 64 px, batch 16 on the CPU,
224 px, batch 64 with `--device cuda`). The tlbench step is the training loop's own step (autocast
forward, cross-entropy + the Keras L2 term, zero_grad, backward, SGD step, scheduler step, the
on-device loss and accuracy sums); the plain loop does the same work written by hand on the same
model. Target: tlbench's step is no slower than the plain loop (speed-up >= ~1.0x).
images/s is in each benchmark's `extra_info` and, with `--record`, in the summary.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from benchmarks.conftest import record

BACKBONE = "resnet18"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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


def _rounds(device: str) -> int:
    return 20 if device.startswith("cuda") else 5


def _label(bench: Any) -> str:
    o = bench.options
    return f"{BACKBONE} {o.image_size}px b{o.batch_size} {bench.device.type}"


def test_train_step_tlbench(benchmark, bench: Any, device: str) -> None:
    from tlbench.bench.measure import tlbench_train_step

    batch = bench.options.batch_size
    x, y = bench.inputs(batch)
    state = bench.train_state(batch)
    bench.model.train()

    def step() -> None:
        tlbench_train_step(state, x, y)
        _sync(device)

    for _ in range(3):
        step()
    benchmark.pedantic(step, rounds=_rounds(device), iterations=1)
    ips = batch / benchmark.stats.stats.median
    benchmark.extra_info["images_per_sec"] = ips
    record("train step", f"tlbench step ({_label(bench)})", ips, notes="the training loop's step")


def test_train_step_plain_loop(benchmark, bench: Any, device: str) -> None:
    from tlbench.bench.measure import plain_train_step

    batch = bench.options.batch_size
    x, y = bench.inputs(batch)
    state = bench.plain_state()
    bench.model.train()

    def step() -> None:
        plain_train_step(state, x, y)
        _sync(device)

    for _ in range(3):
        step()
    benchmark.pedantic(step, rounds=_rounds(device), iterations=1)
    ips = batch / benchmark.stats.stats.median
    benchmark.extra_info["images_per_sec"] = ips
    record(
        "train step",
        f"plain PyTorch loop ({_label(bench)})",
        ips,
        baseline=True,
        notes="same model and work, hand-written",
    )


def test_infer_step(benchmark, bench: Any, device: str) -> None:
    from tlbench.bench.measure import infer_step

    batch = bench.options.batch_size
    x, _ = bench.inputs(batch)
    bench.model.eval()

    def step() -> None:
        infer_step(bench.runner, x, bench.device, bench.amp_dtype)
        _sync(device)

    try:
        for _ in range(3):
            step()
        benchmark.pedantic(step, rounds=_rounds(device), iterations=1)
    finally:
        bench.model.train()
    ips = batch / benchmark.stats.stats.median
    benchmark.extra_info["images_per_sec"] = ips
    record("infer", f"tlbench inference ({_label(bench)})", ips, baseline=True, notes="no_grad forward")
