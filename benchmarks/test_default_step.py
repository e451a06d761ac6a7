"""tlbench's default training step against a plain fp32 NCHW eager PyTorch loop, on the CPU.

The issue's cases: vgg19 freeze 11 and resnet50 freeze 50 %, 64 px, batch 32, the reference recipe.
tlbench's step is what `tlbench run` executes with its defaults (`--channels-last auto`, `--compile
auto`, `--conv-grad auto`, the thread count: `tlbench.speed`). The same step with `--conv-grad off`
(oneDNN's weight gradients everywhere) is timed beside it, to show what each part gives. The plain
loop is `tlbench.bench.reference.plain_train_step` on an NCHW copy of the same model with the same
weights, eager, fp32: what a user writes by hand. They take turns within each repeat
(`time_interleaved`), in one process, so drift hits all alike; a speed-up is the median over repeats
of plain ms / tlbench ms. Target: >= 1.25x.

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
    from tlbench import speed
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
    chosen = bench.speed  # with the convolution verdicts
    onednn = bench.train_step(BATCH)
    onednn.conv_grad = None  # the same step with oneDNN's weight gradients (`--conv-grad off`)
    fns = {
        "tlbench": lambda: step(x, y),
        "conv-grad off": lambda: onednn(x, y),
        "plain": lambda: plain_train_step(plain, x_plain, y),
    }
    for fn in fns.values():  # gradients, optimizer state, oneDNN's primitive caches
        bench.warm(fn, 2)
    heavy = backbone == "vgg19"
    runs: dict[str, list[float]] = {}

    def measure() -> None:
        steps, repeats = (2, 6) if heavy else (3, 8)
        runs.update(time_interleaved(fns, steps=steps, repeats=repeats, device=bench.device))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    ratio = statistics.median(p / t for p, t in zip(runs["plain"], runs["tlbench"], strict=True))
    off = statistics.median(p / t for p, t in zip(runs["plain"], runs["conv-grad off"], strict=True))
    ms = {name: statistics.median(v) for name, v in runs.items()}
    layout = f"{'nhwc' if chosen.channels_last else 'nchw'}, {'compiled' if chosen.compile else 'eager'}"
    group = f"default step: {backbone} f{freeze} {SIZE}px b{BATCH} cpu"
    record(group, "plain fp32 NCHW eager loop", 1000 * BATCH / ms["plain"], baseline=True,
           notes="hand-written, same model and weights")  # fmt: skip
    record(group, "tlbench, --conv-grad off", 1000 * BATCH / ms["conv-grad off"],
           notes=f"{layout}, oneDNN's weight gradients; speed-up {off:.2f}x")  # fmt: skip
    grads = speed.conv_grad_note(chosen.record())
    notes = f"{layout}, conv grad {grads}, {chosen.threads} threads; speed-up {ratio:.2f}x (median of pairs)"
    record(group, "tlbench default step", 1000 * BATCH / ms["tlbench"], notes=notes)
    benchmark.extra_info.update(speedup=ratio, speedup_conv_grad_off=off, tlbench_ms=ms["tlbench"],
                                plain_ms=ms["plain"], conv_grad=chosen.conv_grad_shapes)  # fmt: skip
    print(f"\n{group}: tlbench {ms['tlbench']:.0f} ms, --conv-grad off {ms['conv-grad off']:.0f} ms, "
          f"plain {ms['plain']:.0f} ms; speed-up {ratio:.2f}x ({off:.2f}x with --conv-grad off); "
          f"conv grad {grads}")  # fmt: skip
