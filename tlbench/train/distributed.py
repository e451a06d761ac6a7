"""One run across processes: the process group, and the few collectives the trainer needs.

    torchrun --standalone --nproc-per-node 8 -m tlbench run vgg19 --freeze 11 ...

The group is read from the environment torchrun sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`), or from Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
with `MASTER_ADDR` set by the job script) when a job runs one task per GPU without torchrun. The
backend is nccl on CUDA and gloo on the CPU (`--dist-backend`). Every collective has a timeout
(`TLBENCH_DIST_TIMEOUT` seconds, default 600), so a rank that dies ends the job with an error,
never a hang.

What crosses processes, and why it is exact:
- training: each rank takes its part of every global batch (`tlbench.data.loader.shard`), and DDP
  averages the weighted gradients: the update of one process with the whole batch;
- the running loss and accuracy, the stop flags (a signal on any rank, `--max-time`) and the
  divergence check are summed or or-ed across ranks, so every rank decides the same;
- evaluation: each rank scores a disjoint, unpadded contiguous share of the validation split; the
  counts and the summed loss are reduced once, in float64, and predictions gathered in split order.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tlbench.errors import ConfigError, DeviceError, PeerLost, TlbenchError


class PeerFailed(TlbenchError):
    """Another rank of the job failed at a step every rank takes together; this one stops too, with
    that rank's error and exit code (rank 0 prints it, once for the job)."""


@dataclass(frozen=True)
class Group:
    """This process's place in the job (a job of one process when `world == 1`).

    `peers` is every rank's (host, pid), in rank order: how a rank that lost another names it.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    peers: tuple[tuple[str, int], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory and prints progress."""
        return self.rank == 0

    def record(self, per_rank_batch: int) -> dict[str, Any]:
        """What config.json and the summary record of the job."""
        return {"world_size": self.world, "backend": self.backend, "per_rank_batch": per_rank_batch}

    # -- collectives (no-ops in a job of one) -----------------------------------------------------

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums across ranks, in float64 (exact for counts below 2**53)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device(device))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Element-wise or across ranks: every rank sees the same decision."""
        if not self.enabled:
            return flags
        return [v > 0 for v in self.sum([float(f) for f in flags], device)]

    def max(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._device(device))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's list, concatenated in rank order (each rank gets all)."""
        if not self.enabled:
            return items
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def together(self, device: torch.device) -> Iterator[None]:
        """A step every rank takes together: when it fails on any rank, it fails on every rank.

        A rank that failed re-raises its own error; every healthy rank raises `PeerFailed` with the
        first failed rank's line and exit code, so rank 0 (the one that prints) always tells what
        went wrong, and nobody waits for the failed rank in a later collective.
        """
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._agree(error, device)

    def _agree(self, error: BaseException | None, device: torch.device) -> None:
        if not self.enabled:
            return
        mine = None
        if error is not None:
            line = error.one_line() if isinstance(error, TlbenchError) else f"{type(error).__name__}: {error}"
            mine = (getattr(error, "exit_code", 1), line.splitlines()[0][:300] if line else "")
        failed = [(rank, e) for rank, e in enumerate(self.gather([mine])) if e is not None]
        if failed and error is None:
            rank, (code, line) = failed[0]
            exc = PeerFailed(f"rank {rank} of {self.world} failed: {line}")
            exc.exit_code = code
            raise exc

    def _device(self, device: torch.device) -> torch.device:
        return device if self.backend == "nccl" else torch.device("cpu")


TIMEOUT_ENV = "TLBENCH_DIST_TIMEOUT"


def collective_timeout() -> float:
    """Seconds a rank waits in a collective before it gives up (`TLBENCH_DIST_TIMEOUT`, default 600).

    Raises:
        ConfigError: Not a number of seconds in [1, 86400] (the same one line as a flag's error).
    """
    text = os.environ.get(TIMEOUT_ENV, "").strip() or "600"
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 1 <= seconds <= 86400:  # NaN fails too
        raise ConfigError(
            TIMEOUT_ENV,
            f"{text[:40]!r} is not a number of seconds in [1, 86400]",
            f"e.g. {TIMEOUT_ENV}=600, or unset it (600 s)",
        )
    return seconds


def from_environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, else Slurm's, else a job of one."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return 0, 1, 0


def start(backend: str, device: torch.device, *, sync_bn: bool = False) -> tuple[Group, torch.device]:
    """Join the job's process group (when there is more than one process) and pick this rank's device.

    Args:
        backend: `auto` (nccl on CUDA, gloo on the CPU), `nccl` or `gloo`.
        device: The device the config resolved to; on CUDA each rank takes `cuda:LOCAL_RANK`.
        sync_bn: `--sync-bn` was asked for (CUDA only).

    Raises:
        ConfigError: nccl without CUDA, or --sync-bn on the CPU.
        DeviceError: Fewer GPUs than local ranks.
    """
    rank, world, local_rank = from_environment()
    if world > 1:
        collective_timeout()  # a bad setting is an error before any rank waits for another
    if sync_bn and device.type != "cuda":
        raise ConfigError(
            "sync_bn", "needs CUDA devices (SyncBatchNorm has no CPU kernels)", "drop --sync-bn"
        )
    if world == 1:
        return Group(), device
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            error = DeviceError(
                f"local rank {local_rank} but only {torch.cuda.device_count()} CUDA device(s)",
                "start at most one process per GPU (--nproc-per-node)",
            )
            error.every_rank = True  # this rank's own problem: rank 0 may not have it
            raise error
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    chosen = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and device.type != "cuda":
        raise ConfigError(
            "dist_backend", "nccl needs CUDA devices", "use --dist-backend gloo (or auto) on the CPU"
        )
    if "SLURM_PROCID" in os.environ and "RANK" not in os.environ:
        os.environ.setdefault("MASTER_PORT", "29500")
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                "dist_backend",
                "a Slurm job of several tasks needs MASTER_ADDR",
                "use torchrun, or export MASTER_ADDR",
            )
    timeout = datetime.timedelta(seconds=collective_timeout())
    if not dist.is_initialized():
        dist.init_process_group(chosen, rank=rank, world_size=world, timeout=timeout)
    group = Group(rank, world, local_rank, chosen)
    peers = group.gather([(socket.gethostname(), os.getpid())])
    return replace(group, peers=tuple((str(h), int(p)) for h, p in peers)), device


def is_comm_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer went away: gloo's or NCCL's error, a timeout, a reset."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()  # gloo says "Application timeout caused pair closure", NCCL "Timeout", ...
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection reset", "timed out", "timeout", "pair closure")
    )


def peer_state(host: str, pid: int) -> str | None:
    """What became of a peer process: "ended" (gone, or a zombie not yet reaped), "stopped"
    (SIGSTOP), None when it runs or cannot be seen (another host)."""
    if host != socket.gethostname():
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "ended"
    except OSError:
        return None
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""
    return {"Z": "ended", "X": "ended", "T": "stopped", "t": "stopped"}.get(state)


def _lost_peers(group: Group, wait: float = 2.0) -> dict[int, str]:
    """The peers of this host that ended or are stopped, by rank. A killed peer's connection can
    reset before the kernel shows the process as ended, so a failure with none in sight looks again
    for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        states = {
            rank: state
            for rank, (host, pid) in enumerate(group.peers)
            if rank != group.rank and (state := peer_state(host, pid)) is not None
        }
        if states or time.monotonic() > deadline:
            return states
        time.sleep(0.05)


def lost_peer(group: Group, exc: BaseException, timeout: float, hint: str) -> PeerLost | None:
    """The one-line error for a collective that failed because a rank was lost, or None when `exc`
    is not such a failure. Names the lost rank(s) where this host can see them (a rank that ended,
    or one that is stopped), else says the job lost a process. Printed by rank 0, or by the lowest
    surviving rank when rank 0 is the one lost."""
    if not group.enabled or isinstance(exc, TlbenchError) or not is_comm_failure(exc):
        return None
    states = _lost_peers(group)
    if states:
        what = ", ".join(
            f"rank {rank} (pid {group.peers[rank][1]}) "
            + ("was stopped (SIGSTOP)" if state == "stopped" else "ended (killed or crashed)")
            for rank, state in sorted(states.items())
        )
        why = "stopped" if "stopped" in states.values() else "ended"
        message = f"a process of this {group.world}-process job was lost: {what}"
        if why == "stopped":
            message += (
                f"; rank {group.rank} gave up after the collective timeout ({timeout:g} s, {TIMEOUT_ENV})"
            )
    else:
        message = (
            f"a process of this {group.world}-process job was lost ({type(exc).__name__}: {str(exc)[:120]})"
        )
    error = PeerLost(message.splitlines()[0], hint)
    alive = [r for r in range(group.world) if r not in states]
    error.every_rank = bool(alive) and alive[0] == group.rank  # rank 0 speaks, or the first survivor
    return error


def stop() -> None:
    """Leave the process group (at the end of a run, however it ends)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
