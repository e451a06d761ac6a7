"""tlbench's default training step against a plain fp32 NCHW eager PyTorch loop, on the CPU.

The cases: vgg19 freeze 11 and resnet50 freeze 50 %, 64 px, batch 32, the reference recipe.
tlbench's step is what `tlbench run` executes with its defaults (`--amp auto`, `--channels-last
auto`, `--compile auto`, the thread count: `tlbench.speed`, `tlbench.runtime.choose_amp`): bf16
autocast where the CPU has AMX or AVX512-BF16, fp32 elsewhere; PyTorch's own NCHW. Beside it, in
the same run, the same step with the other layout (`--channels-last on`) and, where the default is
bf16, in fp32 (`--amp off`), so each choice shows what it gives on this CPU. The plain loop is
`tlbench.bench.reference.plain_train_step` on an NCHW copy of the same model, eager, fp32: what a
user writes by hand. They take turns within each repeat (`time_interleaved`), in one process, so
drift hits all alike; a speed-up is the median over repeats of plain ms / variant ms.

    ./dev bench -- -k default_step            # or: .venv/bin/pytest benchmarks/test_default_step.py -s
"""

from __future__ import annotations

import copy
import functools
import statistics
from typing import Any

import pytest

from benchmarks.conftest import record

CASES = [("vgg19", "11"), ("resnet50", "50%")]
BATCH, SIZE = 32, 64


def _plain(bench: Any) -> Any:
    """The hand-written loop's state on an fp32 NCHW copy of the bench's model (same weights)."""
    import torch

    from tlbench.bench.reference import PlainState, plain_optimizer

    model = copy.deepcopy(bench.model).to(memory_format=torch.contiguous_format)
    recipe = bench.recipe
    return PlainState(model, plain_optimizer(model, recipe), None, bench.device, None,
                      model.head.fc1.weight, model.l2, recipe.label_smoothing)  # fmt: skip


def _variants(freeze: str) -> dict[str, Any]:
    """tlbench's default step and the alternatives to each of its choices, as `BackboneBench`es."""
    from tlbench import runtime
    from tlbench.bench import BenchOptions

    base = {"device": "cpu", "freeze": freeze, "batch_size": BATCH, "image_size": SIZE}
    default = BenchOptions(**base)
    variants = {"default": default, "other layout": BenchOptions(**base, channels_last="on")}
    if runtime.cpu_bf16_support():  # the default is bf16 here: show fp32 too
        variants["fp32"] = BenchOptions(**base, amp="off")
    return variants


@pytest.mark.parametrize(("backbone", "freeze"), CASES)
def test_default_step_against_plain_nchw_loop(benchmark: Any, backbone: str, freeze: str) -> None:
    from tlbench import speed
    from tlbench.bench.measure import BackboneBench
    from tlbench.bench.reference import plain_train_step
    from tlbench.bench.timing import time_interleaved

    benches = {name: BackboneBench(backbone, opts) for name, opts in _variants(freeze).items()}
    default = benches["default"]
    plain = _plain(default)
    fns: dict[str, Any] = {}
    for name, bench in benches.items():
        x, y = bench.inputs(BATCH)  # in the variant's layout
        fns[name] = functools.partial(bench.train_step(BATCH), x, y)
    x_plain, y_plain = default.inputs(BATCH)
    fns["plain"] = lambda: plain_train_step(plain, x_plain.contiguous(), y_plain)
    for fn in fns.values():  # gradients, optimizer state, oneDNN's primitive caches
        default.warm(fn, 2)
    runs: dict[str, list[float]] = {}

    def measure() -> None:
        steps, repeats = (2, 6) if backbone == "vgg19" else (3, 8)
        runs.update(time_interleaved(fns, steps=steps, repeats=repeats, device=default.device))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    group = f"default step: {backbone} f{freeze} {SIZE}px b{BATCH} cpu"
    record(group, "plain fp32 NCHW eager loop", 1000 * BATCH / statistics.median(runs["plain"]),
           baseline=True, notes="hand-written, same model and weights")  # fmt: skip
    line = [f"plain {statistics.median(runs['plain']):.0f} ms"]
    for name, bench in benches.items():
        ratio = statistics.median(p / t for p, t in zip(runs["plain"], runs[name], strict=True))
        ms = statistics.median(runs[name])
        how = f"{runtime_name(bench)}, {speed.describe(bench.speed.record())}"
        record(group, f"tlbench, {name}", 1000 * BATCH / ms, notes=f"{how}; speed-up {ratio:.2f}x")
        benchmark.extra_info[f"speedup_{name}"] = ratio
        line.append(f"{name} ({how}) {ms:.0f} ms = {ratio:.2f}x")
    print(f"\n{group}: " + "; ".join(line) + f"; amp: {default.amp_why}")


def runtime_name(bench: Any) -> str:
    """`bf16` or `fp32`: the precision a variant's step runs in."""
    from tlbench import runtime

    return runtime.precision_name(bench.amp_dtype)
