"""The Python API of training: build a config, train it, or continue an unfinished run.

from tlbench.config import run_config
from tlbench.train.api import train
cfg = run_config("vgg19", "keras-vgg19", freeze="11", data="/data/mini-imagenet", epochs=30)
run_dir = train(cfg)                       # a run directory; read it with tlbench.rundir.RunDir

train(resume_config(run_dir), resume=run_dir)   # continue a stopped run
"""

from __future__ import annotations

from pathlib import Path

from tlbench.config import RunConfig, run_config
from tlbench.errors import OutputError, UsageError
from tlbench.rundir import RunDir, SchemaError
from tlbench.train.trainer import train

__all__ = ["RunConfig", "resume_config", "run_config", "train"]


def resume_config(run_dir: str | Path, backbone: str | None = None) -> RunConfig:
    """The saved config of an unfinished run (the backbone, if given, must match).

    Raises:
        OutputError: Not a training run directory this tlbench can read.
        UsageError: `backbone` differs from the run's.
    """
    run = RunDir(run_dir)
    if not run.is_run_dir:
        raise OutputError(f"{run.path} is not a tlbench run directory (no config.json)", "pass a run folder")
    try:
        saved = run.read_config()
    except SchemaError as exc:
        raise OutputError(exc.message, "--resume takes an unfinished run made by this tlbench") from None
    if saved.kind != "run":
        raise OutputError(
            f"{run.path} is a {saved.kind}, not a training run", "--resume takes a folder made by tlbench run"
        )
    if backbone is not None and backbone != saved.config.backbone:
        raise UsageError(
            f"{run.path} trains {saved.config.backbone}, not {backbone}", "leave BACKBONE out with --resume"
        )
    return saved.config
