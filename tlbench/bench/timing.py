"""How `tlbench bench` measures: interleaved timed repeats, out-of-memory halving, FLOP counting.

Time: CUDA events around the measured steps on a GPU, a synchronised wall clock on the CPU (and for
host-side work everywhere). FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmuls,
convolutions, attention; 2 FLOPs per multiply-add; elementwise ops and the optimizer step are not
counted).
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import runtime

if TYPE_CHECKING:
    from tlbench.models import TransferModel


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    steps: int,
    repeats: int,
    device: torch.device,
    wall: bool = False,
) -> dict[str, list[float]]:
    """Milliseconds per step of each function, one value per repeat.

    Within a repeat the functions take turns (all steps of one, then all of the next), so slow
    drift (clock boost, other load) hits each alike.

    Args:
        fns: Name -> a function doing one step.
        steps: Steps per timed run.
        repeats: Timed runs per function.
        device: On CUDA each run is bracketed by CUDA events (GPU time from the first launch to
            the last kernel's end), unless `wall`.
        wall: Time with a wall clock after synchronising (host work included).

    Returns:
        Name -> `repeats` values of ms per step.
    """
    out: dict[str, list[float]] = {name: [] for name in fns}
    use_events = device.type == "cuda" and not wall
    for _ in range(repeats):
        for name, fn in fns.items():
            runtime.sync(device)
            if use_events:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(steps):
                    fn()
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn()
                runtime.sync(device)
                ms = 1000 * (time.perf_counter() - t0)
            out[name].append(ms / steps)
    return out


def halve_on_oom(
    run: Callable[[int], dict[str, Any]],
    batch_size: int,
    what: str,
    cleanup: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], int]:
    """`run(batch)`, halving the batch after each out-of-memory until it fits.

    Args:
        run: Measures at a batch size.
        batch_size: The batch to try first.
        what: Names the measurement in the warning.
        cleanup: Called after an out-of-memory, before retrying (e.g. drop the gradients).

    Returns:
        `run`'s result and the batch it ran at.

    Raises:
        torch.OutOfMemoryError: Even a batch of 1 does not fit.
    """
    batch = batch_size
    while True:
        try:
            return run(batch), batch
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if not is_oom(exc):
                raise
            # leave the except block first, so the traceback's tensors can be freed
        if cleanup is not None:
            cleanup()
        free_memory()
        if batch == 1:
            raise torch.OutOfMemoryError(f"{what}: out of memory even at batch 1")
        warnings.warn(f"{what}: out of memory at batch {batch}; retrying at batch {batch // 2}", stacklevel=2)
        batch //= 2


def is_oom(exc: BaseException) -> bool:
    """Out of device memory: `torch.OutOfMemoryError`, or a cuDNN / cuBLAS workspace allocation failure."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_flops(model: TransferModel, x: Tensor, y: Tensor, train: bool) -> int:
    """FLOPs of one forward (and with `train`, its backward) on batch `x`, eager, full precision.

    The model is left with no gradients; `train` decides the mode (train mode runs dropout and
    BatchNorm in batch-statistics mode, as a training step does).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.train(train)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            if train:
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y) + model.l2_penalty()
                loss.backward()
            else:
                with torch.no_grad():
                    model(x)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return int(counter.get_total_flops())


def median(values: list[float]) -> float:
    return float(statistics.median(values))
