"""Convolution weight gradients as one matrix product on the CPU, where that measures faster.

oneDNN's backward-weights kernel for AVX2 CPUs is slow on the small feature maps of a fine-tuned
network's trainable end: a 3x3 512->512 convolution on 2x2 maps (resnet50's layer4 at 64 px, batch
32) takes ~80 ms for its weight gradient on two cores, against ~10 ms for the same sums as one GEMM
over an im2col copy of the input (README, "Speed defaults"). On 16x16 maps and larger oneDNN wins
or ties. So `--conv-grad auto` (the CPU default, fp32, eager) times both once for each distinct
convolution the run trains (`probe`), keeps the faster, and caches the verdict on disk per CPU,
torch version and thread count; `on` takes the GEMM everywhere it applies, `off` never.

Only the weight gradient changes: the forward is `F.conv2d` and the input gradient oneDNN's, as
without it. The GEMM sums the same products in another order, so the numbers agree to float
rounding (tests/test_convgrad.py).

The switch is a `TorchFunctionMode` (`ConvGrad`) that `TrainStep` enters around the forward: the
model is not modified, so exports, `state_dict`s and copies of it are untouched. It takes a
convolution when the weight is trained (requires grad, grad mode on), the input is a 4-D fp32 CPU
tensor outside autocast, and the convolution is plain (groups 1, dilation 1, numeric padding).
"""

from __future__ import annotations

import json
import os
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
"""The GEMM is kept where it takes at most this fraction of oneDNN's time (ties keep oneDNN)."""

Shape = tuple[int, ...]


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def weight_grad(
    x: Tensor, grad_out: Tensor, weight_shape: Sequence[int], stride: Shape, padding: Shape
) -> Tensor:
    """dL/dW of `conv2d(x, W, stride=stride, padding=padding)` as one GEMM: grad_out^T @ im2col(x).

    The im2col rows are (n, ho, wo) and its columns (kh, kw, c), read from an NHWC view of `x`, so
    the result is the gradient in channels-last order (contiguous for a channels-last weight).
    """
    out_ch, in_ch, kh, kw = weight_shape
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


class _Conv2dGemmWeightGrad(torch.autograd.Function):
    """`F.conv2d` whose backward takes the weight gradient from `weight_grad`."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Shape, padding: Shape
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        if need_w:
            grad_w = weight_grad(x, grad_out, weight.shape, stride, padding)
        if need_b:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class _Conv:
    """The arguments of one `F.conv2d` call, if `ConvGrad` may take it."""

    __slots__ = ("bias", "key", "padding", "stride", "weight", "x")

    def __init__(self, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Shape, padding: Shape) -> None:
        self.x, self.weight, self.bias, self.stride, self.padding = x, weight, bias, stride, padding
        _, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        self.key = f"{c}x{h}x{w}->{o} k{kh}x{kw} s{stride[0]}x{stride[1]} p{padding[0]}x{padding[1]}"

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


def probe(conv: _Conv, fmt: torch.memory_format, repeats: int = 2) -> tuple[float, float]:
    """Seconds for oneDNN's and for the GEMM weight gradient of `conv`'s shapes (best of `repeats`
    after one warm-up each, alternating), on random tensors in the memory format `fmt`."""
    x = torch.randn(conv.x.shape).contiguous(memory_format=fmt)
    weight = torch.randn(conv.weight.shape).contiguous(memory_format=fmt)
    n, _, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    grad_out = torch.randn(n, out_ch, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    grad_out = grad_out.contiguous(memory_format=fmt)
    stride, padding = list(conv.stride), list(conv.padding)

    def onednn() -> object:
        return torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, stride, padding, [1, 1], False, [0, 0], 1, [False, True, False]
        )

    def gemm() -> object:
        return weight_grad(x, grad_out, weight.shape, conv.stride, conv.padding)

    best = [float("inf"), float("inf")]
    fns: list[Callable[[], object]] = [onednn, gemm]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


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
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(machine: str, verdicts: dict[str, str]) -> None:
    """Merge `verdicts` into the cache file (atomically; a cache that cannot be written is skipped)."""
    path = cache_file()
    data = _load()
    data[machine] = data.get(machine, {}) | verdicts
    with suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


class ConvGrad(TorchFunctionMode):
    """Routes trained convolutions to the GEMM weight gradient where it was chosen (see module doc).

    Args:
        mode: `auto` (probe each new convolution shape, cached), `on` (GEMM everywhere it applies).
        memory_format: The model's (and so the probes') memory format.
        devices: Device types whose convolutions are taken.

    Attributes:
        verdicts: Per convolution shape, `gemm` or `onednn` with the probe's times.
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

    def use_gemm(self, conv: _Conv) -> bool:
        """Whether `conv` takes the GEMM weight gradient (probing its shape the first time)."""
        if self.mode == "on":
            self.verdicts.setdefault(conv.key, "gemm (asked for)")
            return True
        verdict = self.verdicts.get(conv.key) or self._cached.get(conv.key)
        if verdict is None:
            onednn, gemm = probe(conv, self.memory_format)
            choice = "gemm" if gemm <= PROBE_MARGIN * onednn else "onednn"
            verdict = f"{choice} (oneDNN {1000 * onednn:.1f} ms, GEMM {1000 * gemm:.1f} ms)"
            _store(self._machine, {conv.key: verdict})
        self.verdicts[conv.key] = verdict
        return verdict.startswith("gemm")

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            conv = _Conv.parse(args, kwargs, self.devices)
            if conv is not None and self.use_gemm(conv):
                return _Conv2dGemmWeightGrad.apply(conv.x, conv.weight, conv.bias, conv.stride, conv.padding)
        return func(*args, **kwargs)

    def discover(
        self, model: nn.Module, input_shape: Sequence[int], memory_format: torch.memory_format
    ) -> None:
        """Decide every trained convolution of `model` for inputs of `input_shape` now, so the run's
        config records the verdicts: the forward runs on the meta device (no memory, no compute),
        and each shape it meets is probed on the CPU. A model that cannot run on the meta device is
        left to decide at its first step."""
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
                self.use_gemm(conv)


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
