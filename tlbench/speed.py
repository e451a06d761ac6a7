"""The fastest correct step for a device and a model: memory layout, `torch.compile`, CPU threads.

`--channels-last auto` and `--compile auto` (the defaults of `tlbench run`, `sweep` and `bench`)
and the CPU thread count are decided here, by rules drawn from measurements (README, "Speed
defaults"), and what was chosen, with why, is recorded in the run's `config.json`
(`resolved.speed`). `on` and `off` force a choice. None of the choices changes the numbers beyond
floating-point rounding: NHWC and NCHW run the same convolutions, and a compiled step the same ops.

- Memory layout: channels-last (NHWC) for convolutional networks, on every device. oneDNN's CPU
  convolutions and cuDNN's tensor-core kernels are fastest in NHWC; NCHW makes both convert the
  activations at every layer. Models with at most a patch-embedding convolution (ViT, MLP-Mixer)
  keep NCHW: there is nothing to convert.
- `torch.compile`: off on the CPU (measured on a 2-core AVX2 CPU: 1.00-1.05x for vgg19 freeze 11
  and resnet50 freeze 50 % at 64 px, for 20-50 s of compiling per process: the convolutions are
  oneDNN's either way). On a GPU, on for runs long enough to repay the compile (at least
  `COMPILE_MIN_STEPS` training steps); off for short runs.
- Convolution weight gradients (CPU, fp32, eager): oneDNN's, one GEMM over an im2col copy of the
  input, or a forward convolution with batch and channels swapped, whichever a short probe measures
  fastest for each trained convolution shape; cached per CPU (`tlbench.train.convgrad`). oneDNN's
  AVX2 backward-weights kernel is several times slower than the others on small feature maps. Off on
  a GPU, compiled, or under autocast.
- Threads (CPU): the cores this process may run on (its affinity mask, which honours taskset,
  cgroups' cpusets and Slurm's binding), shared among the job's processes on this node under
  torchrun. `OMP_NUM_THREADS` set by the user wins, and so does an explicit `threads`.

Importing this module is cheap (no torch); the functions that need torch import it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from tlbench.options import Switch

COMPILE_MIN_STEPS = 2000
"""Training steps from which `--compile auto` compiles on a GPU: a compile takes about a minute,
and saves a fraction of each step's few milliseconds."""

CONVNET_MIN_CONVS = 3
"""A model with at least this many 2-D convolutions is a convolutional network (a ViT has one)."""


def as_switch(value: Any) -> Any:
    """`True`/`False` (the form of earlier configs and of the Python API) as `on`/`off`."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


@dataclass(frozen=True)
class Speed:
    """What a run or a benchmark uses, and why.

    Attributes:
        channels_last: NHWC memory layout for the model and its input.
        compile: Run the forward through `torch.compile` (falls back to eager with a warning).
        threads: Intra-op threads of this process (None: not set by tlbench, e.g. on a GPU).
        why: One short reason per choice (`channels_last`, `compile`, `threads`, `conv_grad`).
        conv_grad: Weight gradients of trained convolutions: `auto` (the fastest algorithm, probed
            per shape), `on` (the GEMM) or `off` (oneDNN's, as without tlbench).
        conv_grad_shapes: Per trained convolution shape, what was taken and why (`tlbench.train.
            convgrad`); filled in once the shapes are known.
    """

    channels_last: bool
    compile: bool
    threads: int | None
    why: dict[str, str]
    conv_grad: str = "off"
    conv_grad_shapes: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON form stored in config.json's `resolved.speed`."""
        return asdict(self)


def describe(record: dict[str, Any]) -> str:
    """`nhwc, eager, conv grad auto (gemm 3, onednn 1), 2 threads`: a `Speed.record()` in short, as
    printed after a run."""
    parts = ["nhwc" if record["channels_last"] else "nchw", "compile" if record["compile"] else "eager"]
    if record.get("conv_grad", "off") != "off":
        parts.append(f"conv grad {conv_grad_note(record)}")
    threads = record.get("threads")
    if threads is not None:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return ", ".join(parts)


def conv_grad_note(record: dict[str, Any]) -> str:
    """`auto (gemm 2, swapped-conv 1, onednn 1)` (or `off`): how many trained convolution shapes of
    a `Speed.record()` take each weight-gradient algorithm."""
    mode = str(record.get("conv_grad", "off"))
    shapes = record.get("conv_grad_shapes") or {}
    if mode == "off" or not shapes:  # no trained convolution, none trained yet (an inference
        # benchmark), or a model the meta device cannot run (decided at its first step, unrecorded)
        return mode
    counts = Counter(str(verdict).split(" ", 1)[0] for verdict in shapes.values())
    return f"{mode} ({', '.join(f'{name} {n}' for name, n in counts.most_common())})"


def count_convs(model: Any) -> int:
    """The 2-D convolutions in `model`."""
    from torch import nn

    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def choose(
    model: Any,
    device_type: str,
    *,
    channels_last: Switch = "auto",
    compile: Switch = "auto",
    threads: int | None = None,
    train_steps: int | None = None,
    local_world: int = 1,
    conv_grad: Switch = "auto",
    amp: bool = False,
) -> Speed:
    """Decide layout, compile and threads for `model` on a device of `device_type`.

    Args:
        model: The model to run (its convolutions are counted).
        device_type: `cpu` or `cuda`.
        channels_last: `auto` decides; `on`/`off` force.
        compile: `auto` decides; `on`/`off` force.
        threads: Intra-op threads on the CPU; None decides.
        train_steps: Training steps the run will take (None: a long run, as a benchmark measures).
        local_world: Processes of the job on this node (they share its cores).
        conv_grad: `auto` probes; `on`/`off` force (CPU, fp32, eager only).
        amp: The step runs under autocast.
    """
    import torch

    why: dict[str, str] = {}
    convs = count_convs(model)
    if channels_last == "auto":
        use_nhwc = convs >= CONVNET_MIN_CONVS
        why["channels_last"] = (
            f"auto: a convolutional network ({convs} convolutions) runs fastest in NHWC on {device_type}"
            if use_nhwc
            else f"auto: {convs} convolution(s), nothing for NHWC to speed up"
        )
    else:
        use_nhwc = channels_last == "on"
        why["channels_last"] = f"{channels_last}: asked for"
    if compile == "auto":
        if device_type != "cuda":
            use_compile = False
            why["compile"] = "auto: on the CPU compiling costs 20-50 s and measured no faster (1.00-1.05x)"
        elif train_steps is not None and train_steps < COMPILE_MIN_STEPS:
            use_compile = False
            why["compile"] = f"auto: {train_steps} steps (< {COMPILE_MIN_STEPS}) do not repay a compile"
        else:
            use_compile = True
            why["compile"] = "auto: a long run on a GPU repays the compile"
    else:
        use_compile = compile == "on"
        why["compile"] = f"{compile}: asked for"
    count: int | None = None
    if threads is not None:
        count = threads
        why["threads"] = "asked for"
    elif device_type == "cpu":
        if os.environ.get("OMP_NUM_THREADS"):
            count = torch.get_num_threads()
            why["threads"] = "OMP_NUM_THREADS"
        else:
            cores = available_cores()
            count = max(1, cores // max(1, local_world))
            why["threads"] = f"auto: {cores} core(s) for {local_world} process(es) on this node"
    grad, why["conv_grad"] = _conv_grad(conv_grad, device_type, use_compile, amp)
    return Speed(channels_last=use_nhwc, compile=use_compile, threads=count, why=why, conv_grad=grad)


def _conv_grad(switch: Switch, device_type: str, compiled: bool, amp: bool) -> tuple[str, str]:
    """`conv_grad` for `Speed`, and why."""
    if switch == "off":
        return "off", "off: asked for"
    blocker = (
        "a CPU path; cuDNN's kernels on a GPU"
        if device_type != "cpu"
        else "compiled: inductor's kernels"
        if compiled
        else "fp32 only, not under autocast"
        if amp
        else None
    )
    if blocker:
        return "off", f"{switch}: {blocker}"
    if switch == "on":
        return "on", "on: asked for"
    return (
        "auto",
        "auto: oneDNN's, a GEMM or a swapped convolution, whichever a probe measures fastest per shape",
    )


def apply_threads(speed: Speed) -> int:
    """Set this process's intra-op threads to `speed.threads` (if set); return the previous count."""
    import torch

    before = torch.get_num_threads()
    if speed.threads is not None and speed.threads != before:
        torch.set_num_threads(speed.threads)
    return before


def memory_format(speed: Speed) -> Any:
    """`torch.channels_last` or `torch.contiguous_format`."""
    import torch

    return torch.channels_last if speed.channels_last else torch.contiguous_format
