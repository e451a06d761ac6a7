"""Scaling, measured: tlbench's train step under DistributedDataParallel on N ranks against one rank.

`tlbench bench --nproc N` runs this from the backbone's worker process, before the worker touches
a device, so the ranks have the GPUs to themselves:

1. N ranks (`torch.multiprocessing.spawn`, one process each): rank r builds the recipe's model on
   `cuda:r` (backend nccl) or the CPU (gloo), wraps it in `DistributedDataParallel` and times
   `TrainStep` on a batch of `batch_size` images of its own. The batch is per rank, as in timm's
   and torchrun's scripts: N ranks train on N x batch images per step. An out-of-memory on any
   rank halves the batch of all ranks and starts them again.
2. One rank at that batch, in the worker itself once the ranks are gone (on `cuda:0`): the same
   model and `TrainStep` with the same thread count, no process group, no DDP wrapper: what one
   device trains at without `--nproc`.

    ddp_samples_per_sec = N x batch / ddp_step_ms               (all ranks together)
    scaling_efficiency  = ddp_samples_per_sec / (N x ddp_single_samples_per_sec)
                        = ddp_single_step_ms / ddp_step_ms      (1.0: N ranks are N times as fast)

Timing: after the warm-up, each of `repeats` runs starts at a barrier and times `steps` steps on
every rank (CUDA events, a synchronised clock on the CPU); a run counts at its slowest rank, and
the median run is reported. A rank gets `threads // N` of this process's threads, and the one rank
as many: on the CPU a rank thus stands for one device in both measurements.

The ranks meet through a `TCPStore` that this process serves on a port of 127.0.0.1 it has bound
itself (loopback only, and no other program can take the port between choosing and binding);
gloo and NCCL are pointed at the loopback interface too (`GLOO_SOCKET_IFNAME`, `NCCL_SOCKET_IFNAME`,
unless set). A collective waits at most `ddp_timeout` seconds, and the first rank that fails
ends all of them: a failure is one `RankFailed` line (the failed row), never a hang.

For tests: `TLBENCH_BENCH_FAULT=R:raise` makes rank R fail, `R:hang` makes it stop answering, once
its model is built (the other ranks are then in their first collective).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tlbench._util import first_line
from tlbench.bench import BenchOptions
from tlbench.bench.timing import free_memory, halve_on_oom, is_oom, median, time_interleaved
from tlbench.errors import DeviceError, TlbenchError

LOOPBACK = "127.0.0.1"
FAULT_ENV = "TLBENCH_BENCH_FAULT"
POLL_S = 0.2  # how often the worker looks at its ranks


class RankFailed(TlbenchError):
    """A rank of the scaling measurement failed: its one-line error, with its exit code."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


def backend_for(options: BenchOptions) -> str:
    """nccl on CUDA, gloo on the CPU."""
    from tlbench.runtime import resolve_device

    return "nccl" if resolve_device(options.device).type == "cuda" else "gloo"


def check_ranks(options: BenchOptions) -> None:
    """Raises DeviceError: `--nproc N` on CUDA with fewer than N GPUs (one per rank)."""
    if options.nproc > 1 and backend_for(options) == "nccl" and torch.cuda.device_count() < options.nproc:
        count = torch.cuda.device_count()
        raise DeviceError(
            f"--nproc {options.nproc} needs {options.nproc} GPUs (one per rank); this machine has {count}",
            f"use --nproc {count} or fewer",
        )


def measure_scaling(backbone: str, options: BenchOptions) -> dict[str, Any]:
    """The train step on `options.nproc` ranks under DDP, then on one rank: the scaling columns.

    Returns:
        `nproc`, `ddp_backend`, the per-rank and global batch, threads per rank, `ddp_*` (all
        ranks together), `ddp_single_*` (one rank) and `scaling_efficiency` (see the module).

    Raises:
        RankFailed: A rank failed, hung past `ddp_timeout`, or died.
        DeviceError: Fewer GPUs than ranks.
        torch.OutOfMemoryError: Not even a batch of 1 per rank fits.
    """
    check_ranks(options)
    n, backend = options.nproc, backend_for(options)
    threads = max(1, torch.get_num_threads() // n)
    ddp, batch = halve_on_oom(
        lambda b: spawn_ranks(backbone, options, n, b, threads),
        options.batch_size,
        f"{backbone} train on {n} ranks",
    )
    single = measure_single(backbone, options, batch, threads)
    ddp_ms, single_ms = median(ddp["runs"]), median(single["runs"])
    ddp_sps, single_sps = n * batch / (ddp_ms / 1000), batch / (single_ms / 1000)
    return {
        "nproc": n,
        "ddp_backend": backend,
        "ddp_batch_size": batch,  # per rank
        "ddp_global_batch_size": n * batch,
        "ddp_threads_per_rank": threads,
        "ddp_samples_per_sec": ddp_sps,
        "ddp_step_ms": ddp_ms,
        "ddp_step_ms_runs": ddp["runs"],
        "ddp_single_samples_per_sec": single_sps,
        "ddp_single_step_ms": single_ms,
        "ddp_single_step_ms_runs": single["runs"],
        "scaling_efficiency": ddp_sps / (n * single_sps),
    }


# -- the worker's side: start the ranks, wait for them, read the result ---------------------------


def _rank_payload(options: BenchOptions) -> dict[str, Any]:
    """What a rank measures: the train step alone (no data pipeline, no plain loop)."""
    device = "cuda" if backend_for(options) == "nccl" else "cpu"  # rank r takes cuda:r
    return options.to_dict() | {
        "device": device,
        "mode": "train",
        "data": None,
        "baseline_loop": False,
        "out": None,
        "nproc": 1,
    }


def measure_single(backbone: str, options: BenchOptions, batch: int, threads: int) -> dict[str, Any]:
    """The train step on one rank, in this process, with `threads` threads: no group, no DDP."""
    before = torch.get_num_threads()
    try:
        result = _measure_rank(0, 1, None, backbone, _rank_payload(options), batch, threads, group=False)
    finally:
        torch.set_num_threads(before)
        free_memory()
    for text in result["warnings"]:
        warnings.warn(f"1 rank: {text}", stacklevel=2)
    return result


def spawn_ranks(backbone: str, options: BenchOptions, world: int, batch: int, threads: int) -> dict[str, Any]:
    """Time the train step under DDP on `world` ranks, one process each; rank 0's result (with
    `world` 1: DDP in a process group of one, which checks the whole path on a single GPU).

    Returns:
        `runs`: ms per step of each timed run (the slowest rank's).

    Raises:
        RankFailed: A rank failed (the first one's error), or died without saying why.
        torch.OutOfMemoryError: A rank ran out of memory.
    """
    payload = _rank_payload(options)
    with _loopback_store(options.ddp_timeout) as (store, port):
        ctx = mp.start_processes(
            _rank_main,
            args=(port, backbone, payload, world, batch, threads),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        try:
            _join(ctx, store, options.ddp_timeout)
        except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
            raise _failure(store, world, exc, options.ddp_timeout) from None
        finally:
            for proc in ctx.processes:  # a straggler after rank 0's result, or after an interrupt
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        result = json.loads(store.get("result"))
    for text in result["warnings"]:
        warnings.warn(f"rank 0 of {world}: {text}", stacklevel=2)
    return result


@contextmanager
def _loopback_store(timeout_s: float) -> Iterator[tuple[dist.TCPStore, int]]:
    """A TCPStore served by this process on a port of 127.0.0.1 that it binds first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        sock.listen()
        port = sock.getsockname()[1]
    except OSError:
        sock.close()
        raise
    store = dist.TCPStore(
        LOOPBACK,
        port,
        None,
        True,
        timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=sock.detach(),  # the store's server owns the socket from here
    )
    try:
        yield store, port
    finally:
        del store


def _join(ctx: Any, store: dist.TCPStore, timeout_s: float) -> None:
    """Wait for every rank; once rank 0 has posted its result, the others get `timeout_s` to exit.

    Raises:
        mp.ProcessExitedException: A rank exited with an error (the others are then ended).
    """
    deadline = None
    while not ctx.join(timeout=POLL_S):
        if deadline is None and store.check(["result"]):
            deadline = time.monotonic() + timeout_s
        elif deadline is not None and time.monotonic() > deadline:
            return  # measured; the stragglers are killed by the caller


def _failure(store: dist.TCPStore, world: int, exc: BaseException, timeout_s: float) -> Exception:
    """The error to raise for a failed spawn: the first rank's own error, when it could say it."""
    records = []
    for rank in range(world):
        with suppress(Exception):
            if store.check([f"error/{rank}"]):
                records.append(json.loads(store.get(f"error/{rank}")))
    if not records:
        return RankFailed(f"train step on {world} ranks: {first_line(exc, with_type=False)}")
    first = min(records, key=lambda r: r["time"])  # the others fail because it did
    where = f"rank {first['rank']} of {world}"
    if first["oom"]:
        return torch.OutOfMemoryError(f"{where}: {first['error']}")
    hint = None
    if "timed out" in first["error"].lower() or "timeout" in first["error"].lower():
        hint = f"a collective waits {timeout_s:g} s (--ddp-timeout): another rank died or hung"
    return RankFailed(f"{where} failed: {first['error']}", hint, first["exit_code"])


# -- the rank's side -------------------------------------------------------------------------------


def _rank_main(
    rank: int, port: int, backbone: str, payload: dict[str, Any], world: int, batch: int, threads: int
) -> None:
    """One rank's process: measure, post the result (rank 0) or the error, and exit (`os._exit`).

    A failure is written to the store as `error/<rank>` and ends the process at once (`os._exit`:
    no clean-up that could wait on a peer), which ends the others (see `spawn_ranks`).
    """
    os.dup2(2, 1)  # the worker's stdout carries its one result line: a rank prints to stderr
    timeout = timedelta(seconds=payload["ddp_timeout"])
    store = None
    try:
        store = dist.TCPStore(LOOPBACK, port, None, False, timeout)
        result = _measure_rank(rank, world, store, backbone, payload, batch, threads, group=True)
        if rank == 0:
            store.set("result", json.dumps(result))
    except BaseException as exc:  # a KeyboardInterrupt too: the worker is gone
        traceback.print_exc()
        code = exc.exit_code if isinstance(exc, TlbenchError) else 1
        text = exc.one_line() if isinstance(exc, TlbenchError) else first_line(exc)
        record = {"rank": rank, "time": time.time(), "error": text, "exit_code": code, "oom": is_oom(exc)}
        if store is not None:
            with suppress(Exception):
                store.set(f"error/{rank}", json.dumps(record))
        sys.stderr.flush()
        os._exit(code)
    # Done (the process group is destroyed, the result posted): leave without the interpreter's
    # teardown, where a gloo thread's destructor can abort the process ("terminate called without
    # an active exception", SIGABRT) after a successful measurement.
    sys.stderr.flush()
    os._exit(0)


def _measure_rank(
    rank: int,
    world: int,
    store: dist.TCPStore | None,
    backbone: str,
    payload: dict[str, Any],
    batch: int,
    threads: int,
    *,
    group: bool,
) -> dict[str, Any]:
    """Build the model and time the train step: this rank's `runs` and the warnings raised.

    With `group`, join the process group of `world` ranks through `store` first, wrap the model in
    DDP, and count each run at the slowest rank; without, the plain step of one device.
    """
    from tlbench.bench.measure import BackboneBench

    torch.set_num_threads(threads)
    cuda = payload["device"] == "cuda"
    options = BenchOptions.from_dict(payload | {"device": f"cuda:{rank}" if cuda else "cpu"})
    device = torch.device(options.device)
    wrap: Callable[[nn.Module], nn.Module] | None = None
    if group:
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(var, "lo")  # loopback only
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            store=store,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=payload["ddp_timeout"]),
            device_id=device if cuda else None,
        )

        def wrap(model: nn.Module) -> nn.Module:
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bench = BackboneBench(backbone, options, wrap=wrap, threads=threads)  # each rank's, and one rank's
        if group:
            _fault(rank)
        runs = _time_steps(bench, batch, group)
        used = torch.get_num_threads()
    if group:
        dist.destroy_process_group()
    texts = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if not issubclass(w.category, DeprecationWarning)
    ]
    return {"runs": runs, "warnings": list(dict.fromkeys(texts)), "threads": used}


def _time_steps(bench: Any, batch: int, group: bool) -> list[float]:
    """Warm up, then `repeats` runs of `steps` train steps: ms per step of each, at the slowest rank."""
    opts = bench.options
    bench.model.train()
    x, y = bench.inputs(batch)
    step = bench.train_step(batch)
    bench.warm(lambda: step(x, y), opts.warmup)
    runs = []
    for _ in range(opts.repeats):
        if group:
            dist.barrier()
        (ms,) = time_interleaved({"train": lambda: step(x, y)}, opts.steps, 1, bench.device)["train"]
        if group:
            slowest = torch.tensor([ms], dtype=torch.float64, device=bench.device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            ms = float(slowest.item())
        runs.append(ms)
    return runs


def _fault(rank: int) -> None:
    """The test hook: `TLBENCH_BENCH_FAULT=R:raise` (or `R:hang`) on rank R."""
    spec = os.environ.get(FAULT_ENV, "")
    target, _, how = spec.partition(":")
    if not spec or int(target) != rank:
        return
    if how == "hang":
        time.sleep(24 * 3600)  # the others time out in their next collective; the worker ends this one
    raise RuntimeError(f"simulated failure of rank {rank} ({FAULT_ENV}={spec})")
