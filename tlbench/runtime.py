"""The device a run uses and how it computes: device, precision, autocast, sync, peak memory.

`tlbench run`, `tlbench bench`, `tlbench baseline` and the benchmarks resolve their device and
precision here, so `--device` and `--amp` mean the same everywhere.
"""

from __future__ import annotations

import resource
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from tlbench.errors import ConfigError, DeviceError

__all__ = [
    "autocast",
    "bf16_cpu_hazard",
    "choose_amp",
    "cpu_bf16_support",
    "guard_bf16",
    "peak_memory_bytes",
    "precision_name",
    "reset_peak_memory",
    "resolve_amp",
    "resolve_device",
    "sync",
]


def resolve_device(spec: str) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> a device.

    Raises:
        ConfigError: Not a device name tlbench supports.
        DeviceError: CUDA asked for but absent, or an index past the last GPU.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError("device", f"{spec!r} is not a device", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda but no CUDA device is available", "use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)",
                "pick an index below that",
            )
    elif device.type != "cpu":
        raise ConfigError("device", f"{spec!r} is not supported", "use auto, cpu, cuda or cuda:N")
    return device


def cpu_bf16_support() -> str | None:
    """What makes this CPU run bf16 natively, as PyTorch reports it: `AMX` (Intel's matrix tiles),
    `AVX512-BF16`, or None (bf16 would be emulated in fp32 and run slower than fp32 itself).

    oneDNN runs CPU autocast's bf16 convolutions and matmuls; it needs those instructions to be fast.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    checks = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, check in checks:
        supported = getattr(torch.cpu, check, None)  # private in torch 2.x, present since 2.2
        if supported is not None and supported():
            return name
    return None


def choose_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of an `--amp` mode on `device` (None is full fp32), and why.

    `auto` is bf16 on CUDA; on the CPU, bf16 where the CPU has AMX or AVX512-BF16
    (`cpu_bf16_support`), fp32 elsewhere. `fp16` needs CUDA, where a GradScaler guards it.

    Raises:
        ConfigError: An unknown mode, or fp16 on the CPU.
    """
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16, "auto: bf16 autocast on CUDA"
        native = cpu_bf16_support()
        if native:
            return torch.bfloat16, f"auto: this CPU has {native}, bf16 autocast runs natively"
        return None, "auto: fp32, this CPU has neither AMX nor AVX512-BF16 (bf16 would be emulated)"
    if amp == "off":
        return None, "off: asked for"
    if amp == "bf16":
        return torch.bfloat16, "bf16: asked for"
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp", "fp16 needs a CUDA device", "use --amp bf16 or off on the CPU")
        return torch.float16, "fp16: asked for"
    raise ConfigError("amp", f"{amp!r} is not one of auto, bf16, fp16, off")


BF16_PROBE_MAX_SIZE = 64
"""Images up to this side are checked for `bf16_cpu_hazard`: a strided convolution meets a 1x1 map
only after the image has been downsampled to one pixel (timm's backbones downsample 32x, some 64x)."""


def bf16_cpu_hazard(model: torch.nn.Module, image_size: int) -> str | None:
    """A strided convolution of `model` that sees a 1x1 map at this image size, or None.

    oneDNN's bf16 weight gradient of such a convolution (3x3, stride 2, padding 1, on a 1x1 input)
    is garbage on AMX CPUs, non-finite in about 1 of 4 calls (torch 2.14; reproduced by
    `benchmarks/onednn_bf16_1x1.py`), so a bf16 CPU run would diverge. Found with one fp32 forward
    of a single image, only for images up to `BF16_PROBE_MAX_SIZE` pixels.
    """
    if image_size > BF16_PROBE_MAX_SIZE:
        return None
    found: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def check(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        stride = getattr(module, "stride", (1, 1))
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[-2:] == (1, 1) and max(stride) > 1:
            found.append(names[module])

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad]
    hooks = [m.register_forward_pre_hook(check) for m in convs]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return found[0] if found else None


def guard_bf16(
    dtype: torch.dtype | None,
    why: str,
    amp: str,
    device: torch.device,
    model: torch.nn.Module,
    image_size: int,
) -> tuple[torch.dtype | None, str]:
    """`choose_amp`'s choice, unless bf16 on the CPU would train a convolution oneDNN gets wrong
    (`bf16_cpu_hazard`): then fp32 under `auto`, and a warning when bf16 was asked for."""
    if dtype != torch.bfloat16 or device.type != "cpu":
        return dtype, why
    layer = bf16_cpu_hazard(model, image_size)
    if layer is None:
        return dtype, why
    bug = f"oneDNN's bf16 weight gradient of {layer} (a strided convolution on a 1x1 map at {image_size} px)"
    if amp == "auto":
        return None, f"auto: fp32, as {bug} is wrong on this CPU; a larger --image-size avoids it"
    warnings.warn(f"--amp bf16: {bug} is wrong on AMX CPUs; the run may diverge", stacklevel=2)
    return dtype, why + f" (warned: {bug} is wrong on AMX CPUs)"


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an `--amp` mode on `device` (`choose_amp` without the reason)."""
    return choose_amp(amp, device)[0]


def precision_name(dtype: torch.dtype | None) -> str:
    """`bf16`, `fp16` or `fp32` (no autocast), as timm's result files name precisions."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """`torch.autocast` to `dtype` on the device, or nothing when `dtype` is None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU, whose ops are synchronous."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the device's peak memory from now (CUDA only: a process's RSS never resets)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory: CUDA's allocated peak since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class EnergyMeter:
    """Energy a CUDA device used since the meter started, from NVML's total-energy counter
    (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver loaded; Volta and newer).

    `joules()` is None where it cannot be read: on the CPU, without `nvidia-ml-py`, or on a GPU
    without the counter. Nothing here ever stops a run.
    """

    def __init__(self, device: torch.device) -> None:
        self._handle: Any = None
        self._start: int | None = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(("GPU-" + uuid).encode())
            self._start = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # no NVML, no counter, an unknown device: no energy figure
            self._handle = self._start = None

    def joules(self) -> float | None:
        if self._handle is None or self._start is None:
            return None
        try:
            import pynvml

            return (int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) - self._start) / 1000
        except Exception:
            return None
