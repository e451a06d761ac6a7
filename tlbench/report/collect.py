"""Reading run directories into `RunRecord`s.

`collect_runs` walks folders for run directories (a folder holding `config.json`) and reads each
finished one through `tlbench.rundir.RunDir` into a `RunRecord`: every value comes from the field the
run-directory schema puts it in, nothing is guessed. Anything it cannot use (unfinished, of another
schema version, damaged) becomes a `Skipped` with the reason, never an exception. Each record carries
its leakage label (`tlbench.report.leakage`); `tlbench.report.aggregate` pools them into rows.

Accuracies stay fractions in [0, 1] here, as in the run directory; the renderers turn them into %.
Importing this module is cheap: torch never loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tlbench.report.leakage import is_synthetic, leakage_flag
from tlbench.rundir import CONFIG, SUMMARY, EpochMetrics, RunDir, RunFile, SchemaError, Summary

NAN = float("nan")

FINISHED_STATUSES = ("finished", "max_time", "stopped_early")
"""Summary statuses that make a run reportable; `max_time` and `stopped_early` (its sweep stopped it:
a race it lost) stopped early at an epoch boundary."""

BASELINE_RECIPE = "baseline"
"""The `recipe` of a baseline record: it has no recipe, it evaluates the pretrained classifier."""

# Recipe fields that have a column of their own (or mean nothing for the result): not "overrides".
_RECIPE_OWN_COLUMNS = frozenset(
    {"name", "summary", "freeze", "epochs", "image_size", "pool", "normalize", "augment"}
)


@dataclass(frozen=True)
class Skipped:
    """A run directory (or folder) that is not in the report, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class RunRecord:
    """One finished run (kind "run") or zero-training baseline (kind "baseline").

    Accuracies are fractions in [0, 1]; a missing number is NaN (floats) or None (counts).
    `best_val_top5` is validation top-5 at the epoch of best top-1, read from metrics.csv (NaN when
    metrics.csv lacks that epoch); it is *not* `final_val_top5`, which is after the last epoch.
    `best_val_top1` is validation top-1 at the best epoch, chosen on the selection split where the
    run has one (`best_chosen_on` "select"), else on these same validation images ("val").
    A baseline evaluates once: its best and final accuracies are that evaluation, its recipe is
    `BASELINE_RECIPE`, its freeze `all` (nothing trains) and its seed, pool, normalize, augment and
    planned epochs None.
    """

    path: Path
    kind: str
    backbone: str
    recipe: str
    recipe_overrides: str
    freeze: str
    seed: int | None
    pool: str | None
    normalize: str | None
    augment: str | None
    image_size: int | None
    epochs: int | None
    """Epochs the recipe planned; `epochs_done` is how many ran."""
    weights_source: str
    dataset: str
    class_list_hash: str | None
    standard_classes: bool | None
    synthetic: bool
    status: str
    best_val_top1: float
    best_epoch: int | None
    best_val_top5: float
    final_val_top1: float
    final_val_top5: float
    final_val_loss: float
    epochs_done: int | None
    params_total: int | None
    params_trainable: int | None
    params_frozen: int | None
    params_backbone: int | None
    frozen_fraction: float
    """params_frozen / params_backbone (0 for `none`, 1 for `all`), NaN when unknown."""
    wall_seconds: float
    device_seconds: float
    """Wall time times the devices held (NaN for runs written before the cost fields)."""
    projected_full_seconds: float
    """The recipe's full schedule on this device, projected from the measured epochs (NaN: unknown)."""
    train_images_per_sec: float
    infer_images_per_sec: float
    peak_memory_bytes: int | None
    device: str
    """The device name (the GPU's model for CUDA) and the precision, e.g. "NVIDIA H100, bf16"."""
    leakage: str
    select: str = "none"
    """The run's selection split (`--select`: `10%`, `5`, `none`): the images held out of training."""
    best_chosen_on: str = "val"
    """What the best epoch was chosen on: `select` (the selection split) or `val` (validation)."""
    select_images: int | None = None
    """Images in the selection split (None without one)."""
    trial: str | None = None
    """A tuning trial of a sweep (`<configuration>#t<k>`): shown in its row's tuning, not as a row."""
    stop_reason: str | None = None
    """Why its sweep stopped it (status `stopped_early`: a race it lost)."""
    run_file: RunFile | None = field(default=None, repr=False, compare=False)
    """config.json as read: the config as asked and what it resolved to (`--group-by` paths)."""
    summary: Summary | None = field(default=None, repr=False, compare=False)
    curves: dict[str, list[float]] = field(default_factory=dict, repr=False, compare=False)
    """metrics.csv, column by column (empty for a baseline)."""


def collect_runs(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[RunRecord], list[Skipped]]:
    """Find and read every run directory under `paths`.

    A run directory is a folder holding `config.json` (its subfolders, such as `model/`, are not
    searched); a folder with only `summary.json` is reported as missing its config. Symbolic links
    are followed, each folder read once; folders whose name starts with "." are not searched.
    Nothing here raises for a bad or unreadable directory: it is returned as `Skipped` with the
    reason (see `read_run`).

    Args:
        paths: Run directories or folders that contain them, searched recursively.

    Returns:
        The records (sorted by path) and the skipped directories. Both empty means nothing was
        found; the caller turns that into a message.
    """
    records: list[RunRecord] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()
    for root in paths:
        for run_dir in _find_run_dirs(Path(root), skipped):
            key = run_dir.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                result = read_run(run_dir)
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                # a well-formed file of impossible values (a string for a count): never stop the report
                result = Skipped(run_dir, f"unreadable run directory: {type(exc).__name__}: {exc}")
            (records if isinstance(result, RunRecord) else skipped).append(result)  # type: ignore[arg-type]
    records.sort(key=lambda r: str(r.path))
    skipped.sort(key=lambda s: str(s.path))
    return records, skipped


def _find_run_dirs(root: Path, skipped: list[Skipped]) -> list[Path]:
    if not root.exists():
        skipped.append(Skipped(root, "no such file or directory"))
        return []
    if not root.is_dir():
        skipped.append(Skipped(root, "not a folder (pass a run directory or a folder of them)"))
        return []

    def onerror(exc: OSError) -> None:
        skipped.append(Skipped(Path(exc.filename or root), f"cannot read folder: {exc.strerror or exc}"))

    found: list[Path] = []
    visited: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        real = Path(dirpath).resolve()
        if real in visited:  # a symlink loop, or a second link to the same folder
            dirnames.clear()
            continue
        visited.add(real)
        if CONFIG in filenames or SUMMARY in filenames:
            found.append(Path(dirpath))
            dirnames.clear()  # model/config.json is the saved model's, not a run
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def read_run(run_dir: Path) -> RunRecord | Skipped:
    """Read one run (or baseline) directory through `RunDir`, or say why it cannot be reported.

    Skipped: no config.json; a config.json or summary.json of another schema version or damaged
    (the `SchemaError`'s line, which names the schema that wrote it); no summary.json yet
    (unfinished: with how to resume it); a summary without a validation top-1; a damaged
    metrics.csv (runs) or env.json (CUDA runs: the GPU's name comes from it).
    """
    rd = RunDir(run_dir)
    if not rd.is_run_dir:
        return Skipped(run_dir, f"missing {CONFIG} (not a complete tlbench run directory)")
    try:
        run_file = rd.read_config()
        if not rd.finished:
            return _unfinished(run_dir, run_file.kind)
        summary = rd.read_summary()
        if summary.status not in FINISHED_STATUSES:
            return Skipped(run_dir, f"status {summary.status!r}")
        if math.isnan(_float(summary.best_val_top1)):
            return Skipped(run_dir, f"{SUMMARY} has no validation top-1 (best_val_top1)")
        metrics = rd.read_metrics() if run_file.kind == "run" else []
        device = _device(rd, summary)
    except SchemaError as exc:
        return Skipped(run_dir, exc.one_line())
    return _record(run_dir, run_file, summary, metrics, device)


def _unfinished(run_dir: Path, kind: str) -> Skipped:
    if kind == "baseline":
        return Skipped(run_dir, f"unfinished baseline: no {SUMMARY} (run the baseline again)")
    return Skipped(
        run_dir,
        f"unfinished: no {SUMMARY} (still running, or resume with tlbench run --resume {run_dir})",
    )


def _record(
    run_dir: Path, run_file: RunFile, summary: Summary, metrics: list[EpochMetrics], device: str
) -> RunRecord:
    config, resolved = run_file.config, run_file.resolved
    data_info = resolved.data_info
    if run_file.kind == "run":
        recipe = config.recipe
        own: dict[str, Any] = {
            "recipe": recipe.name,
            "recipe_overrides": recipe_overrides(asdict(recipe)),
            "freeze": str(config.freeze),
            "seed": config.seed,
            "pool": recipe.pool,
            "normalize": recipe.normalize,
            "augment": recipe.augment,
            "image_size": recipe.image_size,
            "epochs": recipe.epochs,
            "select": config.select,
            "trial": config.trial,
        }
        best_top5 = next((m.val_top5 for m in metrics if m.epoch == summary.best_epoch), None)
    else:  # no recipe, no seed, nothing trained: the classifier evaluated once at its own input size
        own = {
            "recipe": BASELINE_RECIPE,
            "recipe_overrides": "",
            "freeze": "all",
            "seed": None,
            "pool": None,
            "normalize": None,
            "augment": None,
            "image_size": resolved.preprocessing.get("center_crop"),
            "epochs": None,
            "select": "none",
            "trial": None,
        }
        best_top5 = summary.final_val_top5
    frozen, backbone_params = summary.params_frozen, resolved.params.get("backbone")
    return RunRecord(
        path=run_dir,
        kind=run_file.kind,
        backbone=run_file.backbone,
        **own,
        weights_source=summary.weights_source,
        dataset=dataset_label(data_info),
        class_list_hash=data_info.get("class_list_hash"),
        standard_classes=data_info.get("standard_mini_imagenet"),
        synthetic=is_synthetic(data_info),
        status=summary.status,
        best_val_top1=_float(summary.best_val_top1),
        best_epoch=summary.best_epoch,
        best_val_top5=_float(best_top5),
        final_val_top1=_float(summary.final_val_top1),
        final_val_top5=_float(summary.final_val_top5),
        final_val_loss=_float(summary.final_val_loss),
        epochs_done=summary.epochs,
        params_total=summary.params_total,
        params_trainable=summary.params_trainable,
        params_frozen=frozen,
        params_backbone=backbone_params,
        frozen_fraction=_frozen_fraction(own["freeze"], frozen, backbone_params),
        wall_seconds=_float(summary.wall_seconds),
        device_seconds=_float(summary.device_seconds),
        projected_full_seconds=_float(summary.projected_full_seconds),
        train_images_per_sec=_float(summary.train_images_per_sec),
        infer_images_per_sec=_float(summary.infer_images_per_sec),
        peak_memory_bytes=summary.peak_memory_bytes,
        device=device,
        leakage=leakage_flag(summary.weights_source, data_info),
        best_chosen_on=summary.best_chosen_on,
        select_images=summary.select_images or None,
        stop_reason=summary.stop_reason,
        run_file=run_file,
        summary=summary,
        curves={f.name: [_float(getattr(m, f.name)) for m in metrics] for f in fields(EpochMetrics)}
        if metrics
        else {},
    )


def recipe_overrides(recipe: Mapping[str, Any]) -> str:
    """The recipe values that differ from the registered recipe of the same name, e.g. "lr=0.001".

    Values with a column of their own (epochs, image size, pool, normalize, augment) are left out.
    A recipe name tlbench does not know gets a short fingerprint of all its values instead, so runs
    of two different unregistered recipes are never pooled.
    """
    from tlbench.config import RECIPES  # dataclasses only: no torch

    values = {k: v for k, v in recipe.items() if k not in _RECIPE_OWN_COLUMNS}
    base = RECIPES.get(str(recipe.get("name")))
    if base is None:
        blob = json.dumps(values, sort_keys=True, default=str).encode()
        return f"unregistered #{hashlib.sha256(blob).hexdigest()[:8]}"
    defaults = asdict(base)
    changed = [k for k, v in values.items() if k not in defaults or defaults[k] != v]
    return ", ".join(f"{k}={values[k]}" for k in changed)


def dataset_label(data_info: Mapping[str, Any]) -> str:
    """A short name for the evaluation data: the form and split rule, or which synthetic set.

    Two runs with the same label and class-list hash were scored on the same validation images
    (assuming the same copy of the data). A pooled split (ravi-csv, pickle) names its split seed.
    """
    if is_synthetic(data_info):
        root = str(data_info.get("root") or "").replace("\\", "/").rstrip("/")
        return f"synthetic {root.rsplit('/', 1)[-1]}" if root else str(data_info.get("spec") or "synthetic")
    fmt = str(data_info.get("format") or "unknown form")
    seed = data_info.get("split_seed")
    return fmt if seed is None else f"{fmt}, split seed {seed}"


def _frozen_fraction(freeze: str, frozen: int | None, backbone: int | None) -> float:
    spec = freeze.strip().lower()
    if spec == "none":
        return 0.0
    if spec == "all":
        return 1.0
    if frozen is None or not backbone:
        return NAN
    return min(1.0, frozen / backbone)


def _device(rd: RunDir, summary: Summary) -> str:
    """The device and precision, "cpu, fp32"; on CUDA the GPU's name (env.json): "NVIDIA H100, bf16"."""
    name = rd.read_env().get("gpu") if summary.device.startswith("cuda") else None
    precision = "fp32" if summary.amp == "off" else summary.amp
    return f"{name or summary.device}, {precision}"


def _float(value: Any) -> float:
    """A recorded number as a float; None (how NaN is stored) is NaN."""
    return NAN if value is None else float(value)


def read_documents(
    files: Iterable[Path], format_prefix: str, what: str
) -> tuple[list[tuple[Path, dict[str, Any]]], list[Skipped]]:
    """The JSON files among `files` whose `format` starts with `format_prefix`, as (path, document).

    A file that cannot be read or parsed is skipped, named `damaged <what> file`; a JSON file of
    another format (a run's config, a summary) is not ours to judge and is passed over in silence.
    """
    found: list[tuple[Path, dict[str, Any]]] = []
    skipped: list[Skipped] = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            skipped.append(Skipped(f, f"damaged {what} file: {exc}"))
            continue
        if isinstance(doc, dict) and str(doc.get("format", "")).startswith(format_prefix):
            found.append((f, doc))
    return found, skipped
