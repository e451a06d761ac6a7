"""What a finished (or stopped) run reports: its best epoch and its `summary.json` record."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from tlbench import runtime
from tlbench.config.records import EpochMetrics, Status, Summary

if TYPE_CHECKING:
    from tlbench.train.evaluate import Evaluation
    from tlbench.train.trainer import Trainer


def best_epoch(history: list[EpochMetrics], has_selection: bool) -> EpochMetrics | None:
    """The epoch a run reports as its best: the highest selection top-1 where the run has a
    selection split (ties: the lower selection loss, then the earlier epoch), else the highest
    validation top-1 (ties: the earlier epoch). None before the first epoch."""
    if not has_selection:
        return max(history, key=lambda r: r.val_top1, default=None)
    return max(history, key=lambda r: (r.select_top1 or 0.0, -(r.select_loss or 0.0)), default=None)


def run_summary(t: Trainer, status: Status, final: Evaluation | None) -> Summary:
    """`summary.json` of the run `t`: best and final numbers, cost, speed, where it ran."""
    best = t.best_epoch()
    selection = t.resolved.selection
    wall = time.perf_counter() - t.wall_start
    speeds = [r.train_images_per_sec for r in t.history if r.train_images_per_sec]
    params = t.resolved.params
    return Summary(
        kind="run",
        status=status,
        best_val_top1=best.val_top1 if best else (final.top1 if final else None),
        best_epoch=best.epoch if best else None,
        final_val_top1=final.top1 if final else None,
        final_val_top5=final.top5 if final else None,
        final_val_loss=final.loss if final else None,
        val_images=final.images if final else 0,
        epochs=len(t.history),
        params_total=params["total"],
        params_trainable=params["trainable"],
        params_frozen=params["frozen"],
        wall_seconds=round(wall, 3),
        train_images_per_sec=float(statistics.median(speeds)) if speeds else None,
        infer_images_per_sec=final.images_per_sec if final else None,
        peak_memory_bytes=int(t.group.max(runtime.peak_memory_bytes(t.device), t.device)),
        device=str(t.device),
        amp=t.resolved.amp,
        weights_source=t.model.weights_source,
        feature_cache=t.cached.record() if t.cached is not None else {"used": False},
        world_size=t.group.world,
        device_seconds=round(wall * t.group.world, 3),
        energy_joules=t.energy_joules(),
        projected_full_seconds=t.projected_seconds(),
        full_epochs=t.full_epochs(),
        best_chosen_on="select" if selection else "val",
        best_select_top1=best.select_top1 if best else None,
        select_images=selection["images"] if selection else 0,
        stop_reason=t.stop_reason if status == "stopped_early" else None,
    )
