"""tlbench's default training step against a plain fp32 NCHW eager PyTorch loop, on the CPU.

The issue's cases: vgg19 freeze 11 and resnet50 freeze 50 %, 64 px, batch 32, the reference recipe.
tlbench's step is what `tlbench run` executes with its defaults (`--channels-last auto`, `--compile
auto`, the thread count: `tlbench.speed`); the plain loop is `tlbench.bench.reference.plain_train_step`
on an NCHW copy of the same model with the same weights, eager, fp32: what a user writes by hand.
They take turns within each repeat (`time_interleaved`), in one process, so drift hits both alike;
the speed-up is the median over repeats of plain ms / tlbench ms. Target: >= 1.25x.

    ./dev bench -- -k default_step            # or: .venv/bin/pytest benchmarks/test_default_step.py
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import pytest

from benchmarks.conftest import record

CASES = [("vgg19", "11"), ("resnet50", "50%")]
BATCH, SIZE = 32, 64


def _plain(bench: Any) -> tuple[Any, Any]:
    """An NCHW copy of the bench's model (same weights) and its hand-written loop's state."""
    import torch

    from tlbench.bench.reference import PlainState, plain_optimizer

    model = copy.deepcopy(bench.model).to(memory_format=torch.contiguous_format)
    recipe = bench.recipe
    state = PlainState(model, plain_optimizer(model, recipe), None, bench.device, None,
                       model.head.fc1.weight, model.l2, recipe.label_smoothing)  # fmt: skip
    return model, state


@pytest.mark.parametrize(("backbone", "freeze"), CASES)
def test_default_step_against_plain_nchw_loop(benchmark: Any, backbone: str, freeze: str) -> None:
    from tlbench.bench import BenchOptions
    from tlbench.bench.measure import BackboneBench
    from tlbench.bench.reference import plain_train_step
    from tlbench.bench.timing import time_interleaved

    options = BenchOptions(device="cpu", freeze=freeze, batch_size=BATCH, image_size=SIZE)
    bench = BackboneBench(backbone, options)  # the defaults: channels_last auto, compile auto
    _, plain = _plain(bench)
    x, y = bench.inputs(BATCH)  # in the chosen layout
    x_plain = x.contiguous()
    step = bench.train_step(BATCH)
    fns = {"tlbench": lambda: step(x, y), "plain": lambda: plain_train_step(plain, x_plain, y)}
    for fn in fns.values():  # gradients, optimizer state, oneDNN's primitive caches
        bench.warm(fn, 2)
    heavy = backbone == "vgg19"
    runs: dict[str, list[float]] = {}

    def measure() -> None:
        steps, repeats = (2, 6) if heavy else (3, 8)
        runs.update(time_interleaved(fns, steps=steps, repeats=repeats, device=bench.device))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    ratio = statistics.median(p / t for p, t in zip(runs["plain"], runs["tlbench"], strict=True))
    ms = {name: statistics.median(v) for name, v in runs.items()}
    chosen = bench.speed
    layout = f"{'nhwc' if chosen.channels_last else 'nchw'}, {'compiled' if chosen.compile else 'eager'}"
    group = f"default step: {backbone} f{freeze} {SIZE}px b{BATCH} cpu"
    record(group, "plain fp32 NCHW eager loop", 1000 * BATCH / ms["plain"], baseline=True,
           notes="hand-written, same model and weights")  # fmt: skip
    notes = f"{layout}, {chosen.threads} threads; speed-up {ratio:.2f}x (median of paired repeats)"
    record(group, "tlbench default step", 1000 * BATCH / ms["tlbench"], notes=notes)
    benchmark.extra_info.update(speedup=ratio, tlbench_ms=ms["tlbench"], plain_ms=ms["plain"])
    print(f"\n{group}: tlbench {ms['tlbench']:.0f} ms, plain {ms['plain']:.0f} ms, speed-up {ratio:.2f}x")
