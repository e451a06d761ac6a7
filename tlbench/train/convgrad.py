"""Trained convolutions' weight gradients on the CPU by the fastest of three algorithms, per shape.

oneDNN's backward-weights kernel for AVX2 CPUs is slow on the small feature maps of a fine-tuned
network's trainable end: a 3x3 512->512 convolution on 2x2 maps (resnet50's layer4 at 64 px, batch
32) takes 55-85 ms for its weight gradient on two cores, against 8-10 ms for the same sums as one
GEMM over an im2col copy of the input (README, "Speed defaults"). The same sums are also a forward
convolution with batch and channels swapped (`swapped_conv`), which runs on oneDNN's much faster
forward kernel: best on 8x8 to 14x14 maps with 512 channels. On large maps with few channels
oneDNN's own kernel wins. So `--conv-grad auto` (the CPU default, fp32, eager) times the three once
for each distinct convolution shape the run trains (`probe`), keeps the fastest, and caches the
verdict on disk per CPU, torch version, thread count and layout; `on` takes the GEMM everywhere it
applies (no probe), `off` keeps oneDNN's everywhere.

Only the weight gradient changes: the forward is `F.conv2d` and the input gradient oneDNN's, as
without it. Each algorithm sums the same products in another order, so the numbers agree to float
rounding (tests/test_convgrad.py).

The switch is a `TorchFunctionMode` (`ConvGrad`) that `TrainStep` enters around the forward: the
model is not modified, so exports, `state_dict`s and copies of it are untouched. It takes a
convolution when the weight is trained (requires grad, grad mode on), the input is a 4-D fp32 CPU
tensor outside autocast, and the convolution is plain (groups 1, dilation 1, numeric padding).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from tlbench._util import user_cache

PROBE_MARGIN = 0.9
"""Another algorithm replaces oneDNN's where it takes at most this fraction of its time (ties keep
oneDNN's)."""

PROBE_CUTOFF = 2.5
"""An algorithm other than oneDNN's whose warm-up call takes this many times the fastest warm-up is
not timed further (a swapped convolution on a large map can take seconds). oneDNN's, whose first
call also creates its kernel, is always timed."""

GEMM_MAX_BYTES = 2**30
"""The GEMM's im2col copy holds kh*kw times the layer's input; above this size (at the probed batch)
the GEMM is not a candidate."""

Shape = tuple[int, ...]
WeightGrad = Callable[[Tensor, Tensor, Tensor, Shape, Shape], Tensor]


def _pair(value: Any) -> tuple[int, int]:
    """`2`, `[2]` or `(2, 2)` as `(2, 2)` (what `F.conv2d` accepts)."""
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def onednn_weight_grad(x: Tensor, grad_out: Tensor, weight: Tensor, stride: Shape, padding: Shape) -> Tensor:
    """dL/dW by PyTorch's own convolution backward (oneDNN's backward-weights kernel on the CPU)."""
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
        [False, True, False],
    )[1]  # fmt: skip


def gemm_weight_grad(x: Tensor, grad_out: Tensor, weight: Tensor, stride: Shape, padding: Shape) -> Tensor:
    """dL/dW as one GEMM: grad_out^T @ im2col(x).

    The im2col rows are (n, ho, wo) and its columns (kh, kw, c), read from an NHWC view of `x`, so
    the result is the gradient in channels-last order (contiguous for a channels-last weight).
    """
    out_ch, in_ch, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    xn = x.permute(0, 2, 3, 1)  # NHWC (a view when x is channels-last)
    go = grad_out.permute(0, 2, 3, 1).reshape(-1, out_ch)
    if kh == kw == 1 and ph == pw == 0:  # a 1x1 convolution is a GEMM already
        cols = xn[:, ::sh, ::sw].reshape(-1, in_ch)
    else:
        if ph or pw:
            xn = F.pad(xn, (0, 0, pw, pw, ph, ph))
        patches = xn.unfold(1, kh, sh).unfold(2, kw, sw)  # (N, Ho, Wo, C, kh, kw), a view
        cols = patches.permute(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * in_ch)
    return (go.t() @ cols).view(out_ch, kh, kw, in_ch).permute(0, 3, 1, 2)


def swapped_conv_weight_grad(
    x: Tensor, grad_out: Tensor, weight: Tensor, stride: Shape, padding: Shape
) -> Tensor:
    """dL/dW as a forward convolution: dW[o, c, i, j] = sum over n, h, w of grad_out[n, o, h, w] *
    x_padded[n, c, s*h + i, s*w + j], i.e. x with batch and channels swapped (C, N, H, W) convolved
    with grad_out swapped alike (O, N, Ho, Wo) as its kernel, dilated by the stride."""
    _, _, kh, kw = weight.shape
    cl = torch.channels_last
    xt = x.transpose(0, 1).contiguous(memory_format=cl)
    kernel = grad_out.transpose(0, 1).contiguous(memory_format=cl)
    out = F.conv2d(xt, kernel, padding=padding, dilation=stride)[:, :, :kh, :kw]  # (C, O, >=kh, >=kw)
    return out.transpose(0, 1)


ALGORITHMS: dict[str, WeightGrad] = {
    "onednn": onednn_weight_grad,
    "gemm": gemm_weight_grad,
    "swapped-conv": swapped_conv_weight_grad,
}
"""The weight-gradient algorithms, by the name verdicts use."""


class _Conv2dWeightGrad(torch.autograd.Function):
    """`F.conv2d` whose backward takes the weight gradient from one of `ALGORITHMS`."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: Shape,
        padding: Shape,
        algorithm: str,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, algorithm)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, algorithm = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        if need_w and len(x) == 0:  # an empty batch: nothing to sum
            grad_w = torch.zeros_like(weight)
        elif need_w:
            grad_w = ALGORITHMS[algorithm](x, grad_out, weight, stride, padding)
        if need_b:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


class _Conv:
    """The arguments of one `F.conv2d` call, if `ConvGrad` may take it."""

    __slots__ = ("bias", "key", "padding", "stride", "weight", "x")

    def __init__(self, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Shape, padding: Shape) -> None:
        self.x, self.weight, self.bias, self.stride, self.padding = x, weight, bias, stride, padding
        _, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        self.key = f"{c}x{h}x{w}->{o} k{kh}x{kw} s{stride[0]}x{stride[1]} p{padding[0]}x{padding[1]}"

    def out_shape(self) -> tuple[int, int, int, int]:
        """(N, O, Ho, Wo) of the convolution's output."""
        n, _, h, w = self.x.shape
        o, _, kh, kw = self.weight.shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        return n, o, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def im2col_bytes(self) -> int:
        """The size of the GEMM's im2col copy: (N * Ho * Wo) x (kh * kw * C) floats."""
        n, _, ho, wo = self.out_shape()
        _, c, kh, kw = self.weight.shape
        return n * ho * wo * kh * kw * c * 4

    @classmethod
    def parse(cls, args: tuple[Any, ...], kwargs: dict[str, Any], devices: tuple[str, ...]) -> _Conv | None:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        given = dict(zip(names, args, strict=False)) | kwargs
        x, weight = given.get("input"), given.get("weight")
        padding = given.get("padding", 0)
        if not (
            isinstance(x, Tensor)
            and isinstance(weight, Tensor)
            and weight.requires_grad
            and torch.is_grad_enabled()
            and x.dim() == 4
            and x.dtype == weight.dtype == torch.float32
            and x.device.type in devices
            and not torch.is_autocast_enabled("cpu")
            and int(given.get("groups", 1)) == 1
            and _pair(given.get("dilation", 1)) == (1, 1)
            and not isinstance(padding, str)
        ):
            return None
        return cls(x, weight, given.get("bias"), _pair(given.get("stride", 1)), _pair(padding))


def probe(conv: _Conv, fmt: torch.memory_format, repeats: int = 2) -> dict[str, float]:
    """Seconds per algorithm for the weight gradient of `conv`'s shapes, on random tensors in the
    memory format `fmt`: one warm-up call each, then the best of `repeats` calls, taking turns; an
    algorithm far slower than the best at warm-up (`PROBE_CUTOFF`) keeps its warm-up time. The GEMM
    is left out where its im2col copy would exceed `GEMM_MAX_BYTES`."""
    rng = torch.Generator().manual_seed(0)  # the global generator (dropout, data) is left alone
    x = torch.randn(conv.x.shape, generator=rng).contiguous(memory_format=fmt)
    weight = torch.randn(conv.weight.shape, generator=rng).contiguous(memory_format=fmt)
    grad_out = torch.randn(conv.out_shape(), generator=rng).contiguous(memory_format=fmt)

    def timed(name: str) -> float:
        start = time.perf_counter()
        ALGORITHMS[name](x, grad_out, weight, conv.stride, conv.padding)
        return time.perf_counter() - start

    best: dict[str, float] = {}
    for name in ALGORITHMS:
        if name != "gemm" or conv.im2col_bytes() <= GEMM_MAX_BYTES:
            best[name] = timed(name)
    fastest = min(best.values())
    timing = [name for name in best if name == "onednn" or best[name] <= PROBE_CUTOFF * fastest]
    best |= dict.fromkeys(timing, float("inf"))
    for _ in range(repeats):
        for name in timing:
            best[name] = min(best[name], timed(name))
    return best


def choose(times: dict[str, float]) -> str:
    """The verdict on a probe's `times`: the fastest algorithm if it beats oneDNN's by the margin,
    else oneDNN's, with every time (`swapped-conv (onednn 150.0 ms, gemm 118.0 ms, swapped-conv
    85.0 ms)`)."""
    fastest = min(times, key=times.__getitem__)
    if times[fastest] > PROBE_MARGIN * times["onednn"]:
        fastest = "onednn"
    return f"{fastest} ({', '.join(f'{name} {1000 * t:.1f} ms' for name, t in times.items())})"


def _machine() -> str:
    """What a probe's verdict holds for: the CPU, torch's kernels for it, the thread count."""
    model = ""
    with suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model or 'cpu'} {capability}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def cache_file() -> Path:
    """Where verdicts are kept: `<user cache>/tlbench/conv-grad.json`."""
    return user_cache() / "conv-grad.json"


def _load() -> dict[str, dict[str, str]]:
    """The cached verdicts per machine; entries of any other shape (a damaged file) are dropped."""
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError):  # RuntimeError: no home directory to find
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        machine: {key: v for key, v in verdicts.items() if isinstance(key, str) and isinstance(v, str)}
        for machine, verdicts in data.items()
        if isinstance(machine, str) and isinstance(verdicts, dict)
    }


def _store(machine: str, verdicts: dict[str, str]) -> None:
    """Merge `verdicts` into the cache file (atomically: a temporary file renamed over it). A cache
    that cannot be written is skipped; two processes storing at once may lose one's verdicts, which
    are then probed again."""
    data = _load()
    data[machine] = data.get(machine, {}) | verdicts
    tmp: str | None = None
    try:
        path = cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError):
        pass
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)


class ConvGrad(TorchFunctionMode):
    """Routes trained convolutions to the weight-gradient algorithm chosen for their shape (see the
    module's doc).

    Args:
        mode: `auto` (probe each new convolution shape, cached), `on` (the GEMM everywhere it applies).
        memory_format: The model's (and so the probes') memory format.
        devices: Device types whose convolutions are taken.

    Attributes:
        verdicts: Per convolution shape, the algorithm (a name in `ALGORITHMS`) and why: the probe's
            times, or `asked for`.
    """

    def __init__(
        self,
        mode: str = "auto",
        memory_format: torch.memory_format = torch.channels_last,
        devices: tuple[str, ...] = ("cpu",),
    ) -> None:
        super().__init__()
        self.mode = mode
        self.memory_format = memory_format
        self.devices = devices
        self.verdicts: dict[str, str] = {}
        layout = "nhwc" if memory_format == torch.channels_last else "nchw"
        self._machine = f"{_machine()}, {layout}" if mode == "auto" else ""
        self._cached = _load().get(self._machine, {}) if mode == "auto" else {}

    def algorithm(self, conv: _Conv) -> str:
        """The weight-gradient algorithm for `conv` (probing its shape the first time)."""
        if self.mode == "on":
            self.verdicts.setdefault(conv.key, "gemm (asked for)")
            return "gemm"
        verdict = self.verdicts.get(conv.key) or self._cached.get(conv.key, "")
        if verdict.split(" ", 1)[0] not in ALGORITHMS:  # not probed yet (or a damaged cache entry)
            verdict = choose(probe(conv, self.memory_format))
            _store(self._machine, {conv.key: verdict})
        self.verdicts[conv.key] = verdict
        return verdict.split(" ", 1)[0]

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d and (conv := _Conv.parse(args, kwargs, self.devices)) is not None:
            algorithm = self.algorithm(conv)
            if algorithm == "gemm" and conv.im2col_bytes() > GEMM_MAX_BYTES:
                algorithm = "onednn"  # a verdict made at a smaller batch, or `on`: no huge im2col
            if algorithm != "onednn":
                return _Conv2dWeightGrad.apply(
                    conv.x, conv.weight, conv.bias, conv.stride, conv.padding, algorithm
                )
        return func(*args, **kwargs)

    def discover(
        self, model: nn.Module, input_shape: Sequence[int], memory_format: torch.memory_format
    ) -> None:
        """Decide every trained convolution of `model` for inputs of `input_shape` now, so the run's
        config records the verdicts: the forward runs on the meta device (no memory, no compute),
        and each shape it meets is probed on the CPU. A model that cannot run on the meta device is
        left to decide at its first step, and its verdicts are then not in the config."""
        state = {
            name: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        x = torch.empty(tuple(input_shape), device="meta").contiguous(memory_format=memory_format)
        seen: list[_Conv] = []
        recorder = _Recorder(seen)
        with suppress(Exception), recorder:
            torch.func.functional_call(model, state, (x,))
        for conv in seen:
            if conv.key not in self.verdicts:
                self.algorithm(conv)


class _Recorder(TorchFunctionMode):
    """Collects the trained convolutions of a meta-device forward."""

    def __init__(self, seen: list[_Conv]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            conv = _Conv.parse(args, kwargs, ("meta",))
            if conv is not None:
                self.seen.append(conv)
        return func(*args, **kwargs)


def for_speed(
    chosen: Any, model: nn.Module, input_shape: Sequence[int], memory_format: torch.memory_format
) -> tuple[ConvGrad | None, Any]:
    """The `ConvGrad` mode a step enters for `chosen` (a `tlbench.speed.Speed`; None when its
    `conv_grad` is off), with the verdicts for `model`'s trained convolutions at `input_shape`
    recorded in the returned copy of `chosen`."""
    from dataclasses import replace

    if chosen.conv_grad == "off":
        return None, chosen
    mode = ConvGrad(chosen.conv_grad, memory_format)
    mode.discover(model, input_shape, memory_format)
    return mode, replace(chosen, conv_grad_shapes=dict(mode.verdicts))
