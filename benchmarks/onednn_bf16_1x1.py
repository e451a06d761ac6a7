"""oneDNN's bf16 convolution weight gradient on a 1x1 input map with stride 2: garbage on AMX CPUs.

A standalone reproduction for an upstream report (PyTorch / oneDNN), using PyTorch alone. A 3x3
convolution with stride 2 and padding 1 whose input map is 1x1 (a ResNet's last stage on 16 px
images) gets its weight gradient from `aten::convolution_backward`; in bf16 that gradient is often
non-finite, and often far from the fp32 one, while the same call on a 2x2 map, or with stride 1, is
fine. The inputs are random and finite. Seen on an Intel Xeon with AMX, torch 2.14.1: about 1 in
4 calls non-finite and 1 in 2 more off by more than 5 % (relative to the largest fp32 value).
tlbench's `--amp auto` keeps such a run in fp32 (`tlbench.runtime.guard_bf16`).

    python benchmarks/onednn_bf16_1x1.py            # 200 trials per case
"""

from __future__ import annotations

import torch


def weight_grad(
    go: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: int, dtype: torch.dtype
) -> torch.Tensor:
    """dL/dW of a 3x3 convolution (padding 1) by PyTorch's own backward, in `dtype`."""
    args = (go.to(dtype), x.to(dtype), w.to(dtype), None, [stride] * 2, [1, 1], [1, 1])
    return torch.ops.aten.convolution_backward(*args, False, [0, 0], 1, [False, True, False])[1]


def trial(size: int, stride: int, trials: int) -> tuple[int, int]:
    """(non-finite, wrong) bf16 weight gradients out of `trials` for a `size`x`size` input map."""
    nonfinite = wrong = 0
    gen = torch.Generator().manual_seed(0)
    out = (size + 2 - 3) // stride + 1
    for _ in range(trials):
        x = torch.randn(16, 192, size, size, generator=gen)
        w = torch.randn(96, 192, 3, 3, generator=gen)
        go = torch.randn(16, 96, out, out, generator=gen)

        ref, bf16 = (
            weight_grad(go, x, w, stride, dtype).float() for dtype in (torch.float32, torch.bfloat16)
        )
        if not torch.isfinite(bf16).all():
            nonfinite += 1
        elif (bf16 - ref).abs().max() / ref.abs().max() > 0.05:
            wrong += 1
    return nonfinite, wrong


def main(trials: int = 200) -> None:
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    print(f"# torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, AMX {amx}")
    for size, stride in ((1, 2), (1, 1), (2, 2)):
        bad, off = trial(size, stride, trials)
        print(f"input {size}x{size}, stride {stride}: {bad}/{trials} non-finite, {off}/{trials} off by > 5 %")


if __name__ == "__main__":
    main()
