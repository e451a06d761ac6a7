"""Peak dense throughput of known GPUs, and model FLOP utilisation (MFU) against it.

MFU = model FLOPs actually done per second / the device's peak FLOP/s. The model FLOPs are the
ones the step needs (counted by `torch.utils.flop_counter`: 2 FLOPs per multiply-add), not the ones
the hardware happens to execute, so recomputation or padding never raises MFU.

The peaks are the vendors' dense (no 2:4 sparsity) tensor-core numbers in TFLOP/s, for bf16 and
fp16 with fp32 accumulation; the fp32 column is plain (non-TF32) fp32. A GPU is recognised by a
pattern in `torch.cuda.get_device_name()` (e.g. "NVIDIA H100 80GB HBM3"); the first match wins, so
the more specific names come first. Unknown devices and CPUs have no peak, hence no MFU.
"""

from __future__ import annotations

import re

# (pattern, name, {precision: dense TFLOP/s}); searched in order, case-insensitively.
KNOWN_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (r"H100.*PCIe", "H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    (r"H100.*NVL", "H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (r"H100", "H100 SXM", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    (r"H200", "H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    (r"A100", "A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.0, "fp16": 165.0, "fp32": 82.6}),
    (r"RTX 3090", "RTX 3090", {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.0}),  # not L40 / L40S
)
PRECISIONS = ("bf16", "fp16", "fp32")


def match_gpu(device_name: str | None) -> str | None:
    """The table's name for a device (`"H100 SXM"`), or None when it is not in the table."""
    if not device_name:
        return None
    for pattern, name, _ in KNOWN_PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return name
    return None


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """The device's dense peak in FLOP/s (not TFLOP/s) at `precision`, or None when unknown.

    Args:
        device_name: What `torch.cuda.get_device_name()` returns; None or a CPU name gives None.
        precision: `bf16`, `fp16` or `fp32`.

    Returns:
        Peak FLOP/s, e.g. 9.89e14 for an H100 SXM in bf16; None for a device not in the table.

    Raises:
        ValueError: Unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    name = match_gpu(device_name)
    if name is None:
        return None
    peaks = next(p for _, n, p in KNOWN_PEAKS if n == name)
    return peaks[precision] * 1e12


def mfu(flops_per_image: float | None, samples_per_sec: float | None, peak: float | None) -> float | None:
    """Model FLOP utilisation: `flops_per_image * samples_per_sec / peak`, a fraction (0.6 = 60 %).

    Example: VGG19 with blocks 1-3 frozen needs ~72 GFLOP per training image; at 8,000 images/s
    that is 5.8e14 FLOP/s, 58 % of an H100 SXM's 9.89e14 bf16 peak.

    Returns:
        The fraction, or None when any input is missing (no peak known, nothing measured).
    """
    if not flops_per_image or not samples_per_sec or not peak:
        return None
    return flops_per_image * samples_per_sec / peak
