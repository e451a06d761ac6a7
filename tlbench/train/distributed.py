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
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tlbench.errors import ConfigError, DeviceError, TlbenchError


class PeerFailed(TlbenchError):
    """Another rank of the job failed (it printed the reason); this one stops too."""

    exit_code = 1


@dataclass(frozen=True)
class Group:
    """This process's place in the job (a job of one process when `world == 1`)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

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

    def agree(self, ok: bool, device: torch.device) -> None:
        """Raise `PeerFailed` on every healthy rank when some rank was not `ok` (a rank that failed
        calls this before re-raising its own error, so nobody waits for it in a later collective)."""
        if self.enabled and self.any([not ok], device)[0] and ok:
            raise PeerFailed(
                "another process of this run failed (its error is above)", "fix that and run again"
            )

    def _device(self, device: torch.device) -> torch.device:
        return device if self.backend == "nccl" else torch.device("cpu")


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
    if sync_bn and device.type != "cuda":
        raise ConfigError(
            "sync_bn", "needs CUDA devices (SyncBatchNorm has no CPU kernels)", "drop --sync-bn"
        )
    if world == 1:
        return Group(), device
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(
                f"local rank {local_rank} but only {torch.cuda.device_count()} CUDA device(s)",
                "start at most one process per GPU (--nproc-per-node)",
            )
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
    timeout = datetime.timedelta(seconds=float(os.environ.get("TLBENCH_DIST_TIMEOUT", "600")))
    if not dist.is_initialized():
        dist.init_process_group(chosen, rank=rank, world_size=world, timeout=timeout)
    return Group(rank, world, local_rank, chosen), device


def stop() -> None:
    """Leave the process group (at the end of a run, however it ends)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
