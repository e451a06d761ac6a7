"""The fastest correct step for a device and a model: memory layout, `torch.compile`, CPU threads.

`--channels-last auto` and `--compile auto` (the defaults of `tlbench run`, `sweep` and `bench`)
and the CPU thread count are decided here, by rules drawn from measurements (docs/speed.md), and
what was chosen, with why, is recorded in the run's `config.json` (`resolved.speed`). `on` and `off`
force a choice. None of the choices changes the numbers beyond floating-point rounding: NHWC and
NCHW run the same convolutions, and a compiled step the same ops.

- Memory layout: on a GPU, channels-last (NHWC) for convolutional networks: cuDNN's tensor-core
  kernels run convolutions in NHWC, and NCHW makes them convert the activations at every layer.
  On the CPU, PyTorch's own NCHW: oneDNN runs both layouts, and which is faster depends on the
  CPU, the precision and the shapes (no rule was found that holds across CPUs); `tlbench bench
  --channels-last on` and `off` measure both. Models with at most a patch-embedding convolution
  (ViT, MLP-Mixer) keep NCHW everywhere: there is nothing to convert.
- `torch.compile`: off on the CPU (measured on a 2-core AVX2 CPU: 1.00-1.05x for vgg19 freeze 11
  and resnet50 freeze 50 % at 64 px, for 20-50 s of compiling per process: the convolutions are
  oneDNN's either way). On a GPU, on for runs long enough to repay the compile (at least
  `COMPILE_MIN_STEPS` training steps); off for short runs.
- Threads (CPU): the cores this process may run on (its affinity mask, which honours taskset,
  cgroups' cpusets and Slurm's binding), shared among the job's processes on this node under
  torchrun. `OMP_NUM_THREADS` set by the user wins, and so does an explicit `threads`.

Importing this module is cheap (no torch); the functions that need torch import it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from tlbench.options import Switch

COMPILE_MIN_STEPS = 2000
"""Training steps from which `--compile auto` compiles on a GPU: a compile takes about a minute,
and saves a fraction of each step's few milliseconds."""

CONVNET_MIN_CONVS = 3
"""A model with at least this many 2-D convolutions is a convolutional network (a ViT has one)."""


@dataclass(frozen=True)
class Speed:
    """What a run or a benchmark uses, and why.

    Attributes:
        channels_last: NHWC memory layout for the model and its input.
        compile: Run the forward through `torch.compile` (falls back to eager with a warning).
        threads: Intra-op threads of this process (None: not set by tlbench, e.g. on a GPU).
        why: One short reason per choice (`channels_last`, `compile`, `threads`, and `amp` where
            the caller passed the precision's reason).
    """

    channels_last: bool
    compile: bool
    threads: int | None
    why: dict[str, str]

    def record(self) -> dict[str, Any]:
        """The JSON form stored in config.json's `resolved.speed`."""
        return asdict(self)


def describe(record: dict[str, Any]) -> str:
    """`nchw, eager, 2 threads`: a `Speed.record()` in short, as printed after a run.

    Records written by earlier versions may carry more keys (`conv_grad`); they are not shown.
    """
    parts = ["nhwc" if record["channels_last"] else "nchw", "compile" if record["compile"] else "eager"]
    threads = record.get("threads")
    if threads is not None:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return ", ".join(parts)


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
    amp_why: str | None = None,
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
        amp_why: Why the precision is what it is (`runtime.choose_amp`), recorded beside the others.
    """
    import torch

    why: dict[str, str] = {}
    convs = count_convs(model)
    if channels_last == "auto":
        use_nhwc = device_type == "cuda" and convs >= CONVNET_MIN_CONVS
        why["channels_last"] = (
            f"auto: a convolutional network ({convs} convolutions) runs fastest in NHWC on cuDNN"
            if use_nhwc
            else f"auto: {convs} convolution(s), nothing for NHWC to speed up"
            if convs < CONVNET_MIN_CONVS
            else f"auto: PyTorch's own NCHW on {device_type} (no layout is fastest on every CPU)"
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
    if amp_why is not None:
        why["amp"] = amp_why
    return Speed(channels_last=use_nhwc, compile=use_compile, threads=count, why=why)


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
