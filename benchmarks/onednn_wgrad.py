"""oneDNN's convolution weight gradient against the same sums as one GEMM, on small feature maps.

A standalone reproduction for an upstream report (PyTorch / oneDNN), using PyTorch alone. For a
3x3 convolution with many channels on a small map (the trainable end of a fine-tuned network at
64 px: resnet50's layer4 sees 2x2 maps, vgg19's block 4 8x8), it times dL/dW three ways on the CPU:

- `onednn`: `torch.ops.aten.convolution_backward` (what autograd runs; oneDNN's backward-weights);
- `gemm`: `grad_out^T @ im2col(x)`, one matrix product over an unfolded copy of the input;
- `matmul-only`: the GEMM alone, the unfold excluded (a lower bound for any weight gradient);

checks that the three agree, and prints one line per shape with the CPU, PyTorch and oneDNN
versions and the thread count. On a 2-core AMD EPYC (AVX2) with torch 2.14.1, batch 32, the 2x2
case took about 81 ms with oneDNN against about 9 ms as a GEMM; run it on your CPU to see yours.

    python benchmarks/onednn_wgrad.py                 # the default shapes
    python benchmarks/onednn_wgrad.py --batch 8 --threads 4 --layout nchw
    python benchmarks/onednn_wgrad.py --shape 256x14x14-256

Not part of tlbench: tlbench trains with PyTorch's own kernels.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_SHAPES = ("512x2x2-512", "512x4x4-512", "512x8x8-512", "256x14x14-256", "64x56x56-64")
"""`CxHxW-O`: input channels, map height and width, output channels (3x3 kernels, stride 1, pad 1)."""


def onednn(x: Tensor, grad_out: Tensor, weight: Tensor) -> Tensor:
    """dL/dW by PyTorch's convolution backward (oneDNN's backward-weights kernel on the CPU)."""
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]


def im2col(x: Tensor, k: int) -> Tensor:
    """The (N*H*W, k*k*C) patches of `x` (stride 1, padding k // 2), rows in NHWC order."""
    p = k // 2
    xn = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, p, p, p))
    patches = xn.unfold(1, k, 1).unfold(2, k, 1)  # (N, H, W, C, k, k)
    return patches.permute(0, 1, 2, 4, 5, 3).reshape(-1, k * k * x.shape[1])


def gemm(x: Tensor, grad_out: Tensor, weight: Tensor) -> Tensor:
    """dL/dW as `grad_out^T @ im2col(x)`, returned in the weight's (O, C, k, k) shape."""
    out_ch, in_ch, k, _ = weight.shape
    go = grad_out.permute(0, 2, 3, 1).reshape(-1, out_ch)
    return (go.t() @ im2col(x, k)).view(out_ch, k, k, in_ch).permute(0, 3, 1, 2)


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls after one warm-up, in milliseconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def measure(shape: str, batch: int, layout: torch.memory_format, repeats: int) -> str:
    """One line: the three timings for one `CxHxW-O` shape, after checking they agree."""
    dims, out_ch = shape.split("-")
    in_ch, h, w = (int(v) for v in dims.split("x"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_ch, h, w, generator=gen).contiguous(memory_format=layout)
    weight = torch.randn(int(out_ch), in_ch, 3, 3, generator=gen).contiguous(memory_format=layout)
    grad_out = torch.randn(batch, int(out_ch), h, w, generator=gen).contiguous(memory_format=layout)
    ref, ours = onednn(x, grad_out, weight), gemm(x, grad_out, weight)
    err = ((ref - ours).abs().max() / ref.abs().max()).item()
    cols = im2col(x, 3)
    go = grad_out.permute(0, 2, 3, 1).reshape(-1, int(out_ch))
    t = {
        "onednn": best_ms(lambda: onednn(x, grad_out, weight), repeats),
        "gemm": best_ms(lambda: gemm(x, grad_out, weight), repeats),
        "matmul-only": best_ms(lambda: go.t() @ cols, repeats),
    }
    return (
        f"{shape:>14} b{batch}: onednn {t['onednn']:8.2f} ms  gemm {t['gemm']:8.2f} ms  "
        f"matmul-only {t['matmul-only']:8.2f} ms  onednn/gemm {t['onednn'] / t['gemm']:5.2f}x  "
        f"(max rel. diff {err:.1e})"
    )


def cpu_model() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="CxHxW-O (repeatable); default: a small-map set")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own")
    parser.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    print(
        f"# {cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.layout}, fp32, 3x3 stride 1 pad 1"
    )
    with torch.no_grad():
        for shape in args.shape or DEFAULT_SHAPES:
            print(measure(shape, args.batch, layout, args.repeats), flush=True)


if __name__ == "__main__":
    main()
