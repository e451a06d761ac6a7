"""Build a RunConfig from a recipe and command-line overrides, or from a run directory to resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlbench.errors import OutputError, UsageError
from tlbench.train.config import AMP_MODES, RunConfig, parse_duration
from tlbench.train.recipes import get_recipe


def run_config(
    backbone: str,
    recipe: str = "keras-vgg19",
    *,
    freeze: str | None = None,
    data: str | Path | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    image_size: int | None = None,
    normalize: str | None = None,
    augment: str | None = None,
    pool: str | None = None,
    interpolation: str | None = None,
    max_time: str | float | None = None,
    amp: str = "auto",
    out: str | Path | None = None,
    **fields: Any,
) -> RunConfig:
    """The recipe's values with every non-None override applied and checked."""
    base = get_recipe(recipe)
    resolved = base.replace(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        image_size=image_size,
        normalize=normalize,
        augment=augment,
        pool=pool,
        interpolation=interpolation,
    )
    if amp not in AMP_MODES:
        raise UsageError(f"--amp {amp!r} is not one of {', '.join(AMP_MODES)}")
    seconds = parse_duration(max_time) if isinstance(max_time, str) else max_time
    return RunConfig(
        backbone=backbone,
        recipe=resolved,
        freeze=str(freeze if freeze is not None else resolved.freeze),
        data=str(data) if data is not None else None,
        max_time=seconds,
        amp=amp,
        out=str(out) if out is not None else None,
        **fields,
    )


def resume_config(run_dir: Path, backbone: str | None = None) -> RunConfig:
    """The saved config of an unfinished run (the backbone, if given, must match)."""
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(
            f"cannot read {path} ({exc})", "pass the folder of a tlbench run to --resume"
        ) from exc
    keys = set(RunConfig.__dataclass_fields__)
    if saved.get("kind", "run") != "run" or "recipe" not in saved:
        raise OutputError(
            f"{run_dir} is not a tlbench training run", "--resume takes a folder made by tlbench run"
        )
    try:
        cfg = RunConfig.from_dict({k: v for k, v in saved.items() if k in keys})
    except (KeyError, TypeError) as exc:
        raise OutputError(
            f"{path} is not a config tlbench can resume ({exc})", "start a new run instead"
        ) from exc
    if backbone is not None and backbone != cfg.backbone:
        raise UsageError(
            f"{run_dir} trains {cfg.backbone}, not {backbone}", "leave BACKBONE out with --resume"
        )
    return cfg
