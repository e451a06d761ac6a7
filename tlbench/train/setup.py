"""What a run needs before its first batch: its run directory, its data, its model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tlbench._console import say
from tlbench.config import RunConfig
from tlbench.errors import DataError, OutputError
from tlbench.rundir import RunDir

RESUME_KEYS = ("class_list_hash", "counts", "split_rule", "source_fingerprint")
"""What must not have changed in the data for `--resume` to continue a run (the fingerprint covers
every source file's path, size and modification time)."""


def claim_run_dir(cfg: RunConfig, resume: Path | None) -> RunDir:
    """A new run directory claimed empty, or the unfinished one to resume, claimed (rank 0 only)."""
    if resume is None:
        return RunDir.create(cfg.out or cfg.default_out())
    run_dir = RunDir(resume)
    if not run_dir.is_run_dir:
        raise OutputError(
            f"{run_dir.path} is not a tlbench run directory (no config.json)", "pass a run folder"
        )
    if run_dir.finished:
        raise OutputError(
            f"{run_dir.path} is already finished (summary.json exists)", "start a new run instead"
        )
    if not run_dir.has_checkpoint:
        raise OutputError(f"{run_dir.path} has no checkpoint.pt to resume from", "start a new run instead")
    return run_dir.claim()  # refused while another process trains in it


def load_run_data(cfg: RunConfig, resume: RunDir | None, progress: bool) -> Any:
    """The run's data, with its selection split held out (`--select`); when resuming, refused if it
    changed since the run started (`RESUME_KEYS`, and the selection's fingerprint)."""
    from tlbench.config.run import parse_select
    from tlbench.data.dataset import hold_out_selection, load_data

    data = load_data(
        cfg.data,
        cfg.recipe.image_size,
        cfg.recipe.interpolation,
        data_format=cfg.data_format,
        split_seed=cfg.split_seed,
        skip_corrupt=cfg.skip_corrupt,
        progress=progress,
    )
    data = hold_out_selection(data, parse_select(cfg.select), cfg.select, cfg.split_seed)
    if resume is not None:
        resolved = resume.read_config().resolved
        saved = resolved.data_info
        for key in RESUME_KEYS:
            if saved.get(key) != data.info.get(key):
                change = f"{key}: {saved.get(key)} -> {data.info.get(key)}"
                if key == "source_fingerprint":
                    change = "the same classes and counts, but files were replaced or edited"
                raise DataError(
                    f"the data changed since {resume.path} started ({change})",
                    "resume with the same data, or start a new run",
                )
        before, now = (s.get("fingerprint") if s else None for s in (resolved.selection, data.selection))
        if before != now:
            raise DataError(
                f"the selection split of {resume.path} changed since it started ({before} -> {now})",
                "resume with the same data, or start a new run",
            )
    return data


def build_run_model(cfg: RunConfig, num_classes: int, device: torch.device, group: Any) -> Any:
    """The model as the recipe builds it, on `device` (SyncBatchNorm with `--sync-bn` under torchrun);
    `choose_speed` then puts it in its memory layout."""
    from tlbench.models import build_model

    recipe = cfg.recipe
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.backbone,
        num_classes,
        pool=recipe.pool,
        freeze=cfg.freeze,
        pretrained=cfg.pretrained and cfg.weights is None,
        weights=cfg.weights,
        image_size=recipe.image_size,
        hidden=recipe.hidden,
        dropout=recipe.dropout,
        l2=recipe.head_l2,
    )
    if not cfg.pretrained and cfg.weights is None and group.is_main:
        say(f"{cfg.backbone}: training from scratch (random initialisation)", style="yellow")
    if cfg.sync_bn and group.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def choose_speed(cfg: RunConfig, model: Any, device: torch.device, train_steps: int, amp_why: str) -> Any:
    """Layout, compile and CPU threads for this run (`tlbench.speed`); the model is put in the layout
    (the caller sets the threads: `speed.apply_threads`). A job's processes on one node share its
    cores."""
    from tlbench import speed

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    choice = speed.choose(
        model,
        device.type,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        threads=cfg.threads,
        train_steps=train_steps,
        local_world=local_world,
        amp_why=amp_why,
    )
    model.to(memory_format=speed.memory_format(choice))
    return choice


def record_world_change(run_dir: RunDir, resolved: Any, start_epoch: int) -> Any:
    """A run resumed by another number of processes (2 ranks, then 1, or the other way).

    Resuming is legitimate: `--batch-size` is the global batch and every epoch's order comes from the
    same seeded permutation, so each step trains on the same images, only shared differently (the
    augmentation and dropout draws differ, as between any two world sizes). The run continues with
    a one-line note, and config.json says what happened: `resolved.distributed` becomes the job's
    now (as summary.json's `world_size` does), with each earlier job under `earlier` and the epoch
    it reached (`until_epoch`). Rank 0 only.

    Args:
        run_dir: The run directory being resumed.
        resolved: This job's `Resolved` record.
        start_epoch: The epochs done before this job.

    Returns:
        `resolved`, with the earlier jobs added to its `distributed` record when the world changed.
    """
    from dataclasses import replace

    from tlbench.rundir import RunFile

    saved = run_dir.read_config()
    before = dict(saved.resolved.distributed or {"world_size": 1})
    now = dict(resolved.distributed or {})
    if before.get("world_size", 1) == now.get("world_size", 1):
        return resolved
    earlier = [*before.pop("earlier", []), before | {"until_epoch": start_epoch}]
    resolved = replace(resolved, distributed=now | {"earlier": earlier})
    run_dir.write_config(
        RunFile(
            kind="run",
            config=saved.config,
            resolved=replace(saved.resolved, distributed=resolved.distributed),
        )
    )
    say(
        f"note: resumed with {now.get('world_size')} process(es) of {now.get('per_rank_batch')} images "
        f"(epochs 1-{start_epoch} ran with {before.get('world_size')} of {before.get('per_rank_batch')}): "
        "the same global batch and data order, so the run continues; config.json records both",
        soft_wrap=True,
    )
    return resolved
