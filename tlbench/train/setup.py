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
