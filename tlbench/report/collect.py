"""From run directories to one table row per configuration.

`collect_runs` walks folders for run directories (a folder holding `config.json`) and reads each
finished one into a `RunRecord`; anything it cannot use becomes a `Skipped` with the reason, never an
exception. `aggregate` groups the records by configuration (seeds pooled) into a pandas DataFrame:
means, sample standard deviations, the zero-training baseline of the same backbone and class list,
and the leakage flag of `leakage_flag` (REFERENCE.md section 3).

Accuracies stay fractions in [0, 1] here, as in the run directory; the renderers turn them into %.
Importing this module is cheap: pandas loads inside `aggregate`, torch never.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import numbers
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlbench.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

NAN = float("nan")

FINISHED_STATUSES = ("finished", "max_time")
"""Summary statuses that make a run reportable; `max_time` stopped early at an epoch boundary."""

DEFAULT_GROUP_BY = (
    "backbone",
    "recipe",
    "recipe_overrides",
    "freeze",
    "pool",
    "normalize",
    "augment",
    "image_size",
    "epochs",
    "weights_source",
    "dataset",
    "class_list_hash",
)
"""What makes two runs the same configuration (everything but the seed).

`recipe_overrides` holds the recipe values that differ from the registered recipe of that name (lr,
batch size, ...), so a run with `--lr` changed is never pooled with the default. `dataset` names
the data form and split rule; `class_list_hash` the exact class list.
"""

LEAK_SEEN = "seen: images+classes"
LEAK_CLASSES = "classes may overlap"
LEAK_NONE = "none"
LEAK_SYNTHETIC = "none (synthetic)"
LEAK_UNKNOWN = "unknown (custom weights)"

# Recipe fields that have a column of their own (or mean nothing for the result): not "overrides".
_RECIPE_OWN_COLUMNS = frozenset(
    {"name", "summary", "freeze", "epochs", "image_size", "pool", "normalize", "augment"}
)
_IMAGENET_WEIGHTS = re.compile(r"in1k|in21k|in22k|in12k|imagenet|timm default", re.IGNORECASE)
_RANDOM_WEIGHTS = re.compile(r"^\s*none\b|random init|scratch", re.IGNORECASE)


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
    For a baseline, the best and final accuracies are both its single evaluation.
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
    train_images_per_sec: float
    infer_images_per_sec: float
    peak_memory_bytes: int | None
    device: str
    """The device name (the GPU's model for CUDA) and the precision, e.g. "NVIDIA H100, bf16"."""
    leakage: str
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    summary: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    curves: dict[str, list[float]] = field(default_factory=dict, repr=False, compare=False)
    """metrics.csv, column by column (empty for a baseline or when the file is missing)."""


# ----------------------------------------------------------------------------------------------
# The leakage rule


def weights_kind(weights_source: str | None) -> str:
    """Classify a recorded weights source as "random", "imagenet" or "unknown".

    "random": `none (random init)` (or a source naming random init / scratch). "imagenet": a timm
    hub tag or path naming ImageNet pretraining (`in1k`, `in21k_ft_in1k`, `in21k`, `in22k`, `in12k`,
    `imagenet`), or timm's default pretrained weights when the tag was not recorded (every timm
    default for the backbones tlbench targets is ImageNet-pretrained). Anything else, such as a
    local weight file with a neutral name, is "unknown".
    """
    if not weights_source:
        return "unknown"
    if _RANDOM_WEIGHTS.search(weights_source):
        return "random"
    if _IMAGENET_WEIGHTS.search(weights_source):
        return "imagenet"
    return "unknown"


def is_synthetic(data_info: Mapping[str, Any], data_spec: str | None = None) -> bool:
    """True for tlbench's synthetic data: spec `synthetic...` or a root under a `/synthetic/` folder."""
    spec = str(data_info.get("spec") or data_spec or "")
    root = str(data_info.get("root") or "").replace("\\", "/")
    return bool(data_info.get("synthetic")) or spec.startswith("synthetic") or "/synthetic/" in root


def leakage_flag(
    weights_source: str | None, data_info: Mapping[str, Any], data_spec: str | None = None
) -> str:
    """What the backbone's pretraining already saw of the evaluation data (REFERENCE.md section 3).

    The rule, first match wins:

    1. synthetic data -> "none (synthetic)": rendered images, nothing to have seen.
    2. random initialisation -> "none".
    3. weights not recognisably ImageNet-pretrained (see `weights_kind`) -> "unknown (custom
       weights)": the report cannot tell what they were trained on.
    4. ImageNet-pretrained weights on the standard mini-ImageNet 100 classes (`data_info`'s
       `standard_mini_imagenet`) -> "seen: images+classes". Every image of the classic forms
       (imagefolder, ravi-csv, pickle) and of the `timm/mini-imagenet` parquet train and validation
       splits comes from the ImageNet-1k *training* set, with the same label meaning; tlbench
       evaluates on the validation split, so the backbone was trained on the very images it is
       scored on. (Only the parquet *test* split, from ImageNet-1k val, is unseen; no run evaluates
       on it yet.) ImageNet-21k/12k pretraining also covers these images and classes.
    5. ImageNet-pretrained weights on any other class list -> "classes may overlap".

    Args:
        weights_source: The run's recorded weights source, e.g. "timm/vgg19.tv_in1k" or
            "none (random init)".
        data_info: config.json's `data_info` (keys used: standard_mini_imagenet, root, spec,
            synthetic).
        data_spec: config.json's `data`, a fallback when `data_info` lacks `spec`.

    Returns:
        One of the LEAK_* strings.
    """
    if is_synthetic(data_info, data_spec):
        return LEAK_SYNTHETIC
    kind = weights_kind(weights_source)
    if kind == "random":
        return LEAK_NONE
    if kind == "unknown":
        return LEAK_UNKNOWN
    if data_info.get("standard_mini_imagenet"):
        return LEAK_SEEN
    return LEAK_CLASSES


# ----------------------------------------------------------------------------------------------
# Reading run directories


def collect_runs(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[RunRecord], list[Skipped]]:
    """Find and read every run directory under `paths`.

    A run directory is a folder holding `config.json` (its subfolders, such as `model/`, are not
    searched); a folder with only `summary.json` is reported as missing its config. Symbolic links
    are followed, each folder read once. A run is
    finished when `summary.json` exists and parses and its status is finished or max_time. Folders
    whose name starts with "." are not searched. Nothing here raises for a bad or unreadable
    directory: it is returned as `Skipped` with the reason.

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
                # A malformed file can break the reading in many small ways; none may stop the report.
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
        if "config.json" in filenames or "summary.json" in filenames:
            found.append(Path(dirpath))
            dirnames.clear()  # model/config.json is the saved model's, not a run
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def read_run(run_dir: Path) -> RunRecord | Skipped:
    """Read one run (or baseline) directory, or say why it cannot be reported."""
    if not (run_dir / "config.json").is_file():
        return Skipped(run_dir, "missing config.json (not a complete tlbench run directory)")
    config, error = _read_json(run_dir / "config.json")
    if config is None:
        return Skipped(run_dir, f"corrupt config.json: {error}")
    if not config.get("backbone"):
        return Skipped(run_dir, "config.json is not a tlbench run config (no backbone)")
    kind = "baseline" if config.get("kind") == "baseline" else "run"
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        if kind == "baseline":
            return Skipped(run_dir, "unfinished baseline: no summary.json (run the baseline again)")
        return Skipped(
            run_dir,
            f"unfinished: no summary.json (still running, or resume with tlbench run --resume {run_dir})",
        )
    summary, error = _read_json(summary_path)
    if summary is None:
        return Skipped(run_dir, f"corrupt summary.json: {error}")
    status = str(summary.get("status", "finished"))
    if status not in FINISHED_STATUSES:
        detail = summary.get("error") or summary.get("message")
        return Skipped(run_dir, f"status {status!r}" + (f": {detail}" if detail else ""))
    return _record(run_dir, kind, config, summary, status)


def _record(
    run_dir: Path, kind: str, config: dict[str, Any], summary: dict[str, Any], status: str
) -> RunRecord | Skipped:
    data_info = config.get("data_info") if isinstance(config.get("data_info"), dict) else {}
    recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
    params = config.get("params") if isinstance(config.get("params"), dict) else {}
    data_spec = config.get("data")
    weights_source = _weights_source(config, summary)
    if kind == "baseline":
        top1 = _first_float(summary, ("val_top1", "top1", "best_val_top1", "final_val_top1"))
        top5 = _first_float(summary, ("val_top5", "top5", "best_val_top5", "final_val_top5"))
        best_top1 = final_top1 = top1
        best_top5 = final_top5 = top5
        best_epoch = None
        curves: dict[str, list[float]] = {}
        recipe_name = str(recipe.get("name") or config.get("method") or "baseline")
    else:
        best_top1 = _float(summary.get("best_val_top1"))
        final_top1 = _float(summary.get("final_val_top1"))
        final_top5 = _float(summary.get("final_val_top5"))
        best_epoch = _int(summary.get("best_epoch"))
        curves = _read_metrics(run_dir / "metrics.csv")
        best_top5 = _at_epoch(curves, "val_top5", best_epoch)
        recipe_name = str(recipe.get("name") or "?")
    if math.isnan(best_top1):
        return Skipped(run_dir, "summary.json has no validation top-1 (best_val_top1)")

    freeze = str(config.get("freeze", "none"))
    frozen = _int(summary.get("params_frozen", params.get("frozen")))
    backbone_params = _int(params.get("backbone"))
    return RunRecord(
        path=run_dir,
        kind=kind,
        backbone=str(config["backbone"]),
        recipe=recipe_name,
        recipe_overrides=recipe_overrides(recipe) if kind == "run" else "",
        freeze=freeze,
        seed=_int(config.get("seed")),
        pool=recipe.get("pool"),
        normalize=recipe.get("normalize"),
        augment=recipe.get("augment"),
        image_size=_int(recipe.get("image_size", data_info.get("image_size"))),
        epochs=_int(recipe.get("epochs")),
        weights_source=weights_source,
        dataset=dataset_label(data_info, data_spec),
        class_list_hash=data_info.get("class_list_hash"),
        standard_classes=data_info.get("standard_mini_imagenet"),
        synthetic=is_synthetic(data_info, data_spec),
        status=status,
        best_val_top1=best_top1,
        best_epoch=best_epoch,
        best_val_top5=best_top5,
        final_val_top1=final_top1,
        final_val_top5=final_top5,
        final_val_loss=_float(summary.get("final_val_loss")),
        epochs_done=_int(summary.get("epochs")),
        params_total=_int(summary.get("params_total", params.get("total"))),
        params_trainable=_int(summary.get("params_trainable", params.get("trainable"))),
        params_frozen=frozen,
        params_backbone=backbone_params,
        frozen_fraction=_frozen_fraction(freeze, frozen, backbone_params),
        wall_seconds=_float(summary.get("wall_seconds")),
        train_images_per_sec=_float(summary.get("train_images_per_sec")),
        infer_images_per_sec=_float(summary.get("infer_images_per_sec")),
        peak_memory_bytes=_int(summary.get("peak_memory_bytes")),
        device=_device(run_dir, config, summary),
        leakage=leakage_flag(weights_source, data_info, data_spec),
        config=config,
        summary=summary,
        curves=curves,
    )


def recipe_overrides(recipe: Mapping[str, Any]) -> str:
    """The recipe values that differ from the registered recipe of the same name, e.g. "lr=0.001".

    Values with a column of their own (epochs, image size, pool, normalize, augment) are left out.
    A recipe name tlbench does not know gets a short fingerprint of all its values instead, so runs
    of two different unregistered recipes are never pooled.
    """
    from tlbench.train.recipes import RECIPES  # dataclasses only: no torch

    values = {k: v for k, v in recipe.items() if k not in _RECIPE_OWN_COLUMNS}
    base = RECIPES.get(str(recipe.get("name")))
    if base is None:
        blob = json.dumps(values, sort_keys=True, default=str).encode()
        return f"unregistered #{hashlib.sha256(blob).hexdigest()[:8]}"
    defaults = asdict(base)
    changed = [k for k, v in values.items() if k not in defaults or defaults[k] != v]
    return ", ".join(f"{k}={values[k]}" for k in changed)


def dataset_label(data_info: Mapping[str, Any], data_spec: str | None = None) -> str:
    """A short name for the evaluation data: the form and split rule, or which synthetic set.

    Two runs with the same label and class-list hash were scored on the same validation images
    (assuming the same copy of the data). A pooled split (ravi-csv, pickle) names its split seed.
    """
    if is_synthetic(data_info, data_spec):
        root = str(data_info.get("root") or "").replace("\\", "/").rstrip("/")
        if "/synthetic/" in root:
            return f"synthetic {root.rsplit('/', 1)[-1]}"
        return str(data_info.get("spec") or data_spec or "synthetic")
    fmt = str(data_info.get("format") or "unknown form")
    seed = data_info.get("split_seed")
    return fmt if seed is None else f"{fmt}, split seed {seed}"


def freeze_order(spec: str) -> tuple[int, float, str]:
    """A sort key for freeze specs: none, then N (by N), then P% (by P), then all."""
    s = str(spec).strip().lower()
    if s == "none":
        return (0, 0.0, "")
    if s.isdigit():
        return (1, float(s), "")
    if s.endswith("%"):
        try:
            return (2, float(s[:-1]), "")
        except ValueError:
            pass
    if s == "all":
        return (3, 0.0, "")
    return (4, 0.0, s)


def _weights_source(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    source = summary.get("weights_source") or config.get("weights_source")
    if source:
        return str(source)
    if config.get("weights"):
        return f"file {config['weights']}"
    if config.get("pretrained") is False:
        return "none (random init)"
    if config.get("pretrained") is True:
        return "timm default pretrained (tag not recorded)"
    return "not recorded"


def _frozen_fraction(freeze: str, frozen: int | None, backbone: int | None) -> float:
    spec = freeze.strip().lower()
    if spec == "none":
        return 0.0
    if spec == "all":
        return 1.0
    if frozen is None or not backbone:
        return NAN
    return min(1.0, frozen / backbone)


def _device(run_dir: Path, config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    device = str(summary.get("device") or config.get("device_resolved") or "unknown device")
    env, _ = _read_json(run_dir / "env.json")
    name = env.get("gpu") if env and device.startswith("cuda") else None
    amp = summary.get("amp") or config.get("amp_resolved")
    precision = None if amp is None else ("fp32" if amp == "off" else str(amp))
    label = str(name or device)
    return f"{label}, {precision}" if precision else label


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(object, "") or (None, why): never raises."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError) as exc:
        return None, str(exc)
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, found {type(obj).__name__}"
    return obj, ""


def _read_metrics(path: Path) -> dict[str, list[float]]:
    """metrics.csv as {column: values} (floats, NaN for blanks); {} when missing or unreadable."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    if not rows:
        return {}
    columns = [c for c in rows[0] if c is not None]
    return {c: [_float(row.get(c)) for row in rows] for c in columns}


def _at_epoch(curves: Mapping[str, list[float]], column: str, epoch: int | None) -> float:
    values, epochs = curves.get(column), curves.get("epoch")
    if not values or not epochs or epoch is None:
        return NAN
    for e, v in zip(epochs, values, strict=False):
        if e == epoch:
            return v
    return NAN


def _float(value: Any) -> float:
    if value is None or value == "" or isinstance(value, bool):
        return NAN
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if math.isnan(number) else int(number)


def _first_float(d: Mapping[str, Any], keys: Sequence[str]) -> float:
    for key in keys:
        value = _float(d.get(key))
        if not math.isnan(value):
            return value
    return NAN


# ----------------------------------------------------------------------------------------------
# Aggregation

METRICS = ("best_val_top1", "best_val_top5", "final_val_top1", "final_val_loss")
"""Aggregated as mean and sample standard deviation (ddof=1; NaN for a single value)."""

COLUMNS = (
    *DEFAULT_GROUP_BY,
    "n",
    "seeds",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")),
    "baseline_top1",
    "leakage",
    "params_trainable",
    "params_total",
    "frozen_fraction",
    "epochs_done",
    "stopped_early",
    "train_images_per_sec",
    "infer_images_per_sec",
    "peak_memory_bytes",
    "wall_seconds",
    "device",
    "run_dirs",
)
"""The columns of `aggregate`, in order (a custom group key's extra columns come first)."""

_INT_COLUMNS = (
    "image_size",
    "epochs",
    "n",
    "params_trainable",
    "params_total",
    "epochs_done",
    "stopped_early",
    "peak_memory_bytes",
)
_RECORD_FIELDS = frozenset(f.name for f in fields(RunRecord)) - {"config", "summary", "curves"}


def aggregate(records: Sequence[RunRecord], group_by: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration, seeds pooled.

    Baseline records are not rows: they fill `baseline_top1` of the rows with the same backbone,
    class-list hash and real-vs-synthetic data (preferring a baseline on the same data form, then
    the same weights). Columns (accuracies as fractions):

    - the group key (DEFAULT_GROUP_BY unless given); a key column that is not in the group key
      holds the one common value, or the distinct values joined by ", ";
    - n (runs pooled), seeds ("0,1,2");
    - `<metric>_mean`, `<metric>_std` for best_val_top1, best_val_top5 (at the best epoch),
      final_val_top1 and final_val_loss; std is the sample std (ddof=1), NaN when n == 1;
    - baseline_top1, leakage (see `leakage_flag`);
    - params_trainable, params_total, frozen_fraction (share of the backbone's parameters
      frozen), epochs_done (fewest epochs any seed ran), stopped_early (runs with status max_time);
    - train_images_per_sec and infer_images_per_sec (means), peak_memory_bytes (max),
      wall_seconds (mean per run), device (distinct values joined: throughput pooled over
      different devices is flagged by a comma here);
    - run_dirs: the run directories of the row, joined by ";".

    Args:
        records: From `collect_runs`.
        group_by: Record fields (see RunRecord) or dotted config.json paths (e.g. "recipe.lr",
            "split_seed") that define a configuration.

    Returns:
        The table, sorted by the group key (freeze specs in depth order); empty with the columns
        above when there are no training runs.

    Raises:
        UsageError: a group_by name is neither a record field nor found in any config.json.
    """
    import pandas as pd

    runs = [r for r in records if r.kind == "run"]
    baselines = [r for r in records if r.kind == "baseline"]
    keys = tuple(group_by) if group_by else DEFAULT_GROUP_BY
    _check_group_by(keys, records)
    columns = [k for k in keys if k not in COLUMNS] + list(COLUMNS)

    groups: dict[tuple[Any, ...], list[RunRecord]] = {}
    for record in runs:
        groups.setdefault(tuple(_key_value(record, k) for k in keys), []).append(record)

    rows = []
    for key, group in sorted(groups.items(), key=lambda item: _sort_key(keys, item[0])):
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for name in DEFAULT_GROUP_BY:
            if name not in row:
                row[name] = _joined(getattr(r, name) for r in group)
        row.update(_group_numbers(group, baselines))
        rows.append(row)
    df = pd.DataFrame(rows, columns=columns)
    for name in _INT_COLUMNS:
        if name in df and df[name].map(lambda v: v is None or isinstance(v, numbers.Real)).all():
            df[name] = pd.array([None if _missing(v) else int(v) for v in df[name]], dtype="Int64")
    return df


def _group_numbers(group: list[RunRecord], baselines: list[RunRecord]) -> dict[str, Any]:
    row: dict[str, Any] = {"n": len(group)}
    row["seeds"] = ",".join(str(s) for s in sorted({r.seed for r in group if r.seed is not None}))
    for metric in METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([getattr(r, metric) for r in group])
    row["baseline_top1"] = _baseline_top1(group, baselines)
    row["leakage"] = _joined(r.leakage for r in group)
    row["params_trainable"] = _first(r.params_trainable for r in group)
    row["params_total"] = _first(r.params_total for r in group)
    row["frozen_fraction"] = mean_std([r.frozen_fraction for r in group])[0]
    done = [r.epochs_done for r in group if r.epochs_done is not None]
    row["epochs_done"] = min(done) if done else None
    row["stopped_early"] = sum(r.status != "finished" for r in group)
    row["train_images_per_sec"] = mean_std([r.train_images_per_sec for r in group])[0]
    row["infer_images_per_sec"] = mean_std([r.infer_images_per_sec for r in group])[0]
    peaks = [r.peak_memory_bytes for r in group if r.peak_memory_bytes is not None]
    row["peak_memory_bytes"] = max(peaks) if peaks else None
    row["wall_seconds"] = mean_std([r.wall_seconds for r in group])[0]
    row["device"] = _joined(r.device for r in group)
    row["run_dirs"] = ";".join(str(r.path) for r in group)
    return row


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the non-NaN values; NaN where undefined."""
    finite = [float(v) for v in values if not _missing(v)]
    if not finite:
        return NAN, NAN
    mean = statistics.mean(finite)
    return mean, (statistics.stdev(finite) if len(finite) > 1 else NAN)


def _baseline_top1(group: list[RunRecord], baselines: list[RunRecord]) -> float:
    def match(r: RunRecord) -> tuple[Any, ...]:
        return (r.backbone, r.class_list_hash, r.synthetic)

    first = group[0]
    if first.class_list_hash is None or any(match(r) != match(first) for r in group):
        return NAN
    candidates = [b for b in baselines if match(b) == match(first)]
    preferences = (
        lambda b: b.dataset == first.dataset and b.weights_source == first.weights_source,
        lambda b: b.dataset == first.dataset,
        lambda b: b.weights_source == first.weights_source,
        lambda b: True,
    )
    for prefer in preferences:
        chosen = [b.best_val_top1 for b in candidates if prefer(b)]
        if chosen:
            return mean_std(chosen)[0]
    return NAN


def _check_group_by(keys: Sequence[str], records: Sequence[RunRecord]) -> None:
    for key in keys:
        if key in _RECORD_FIELDS:
            continue
        if not records or any(_lookup(r.config, key) is not _ABSENT for r in records):
            continue
        raise UsageError(
            f"cannot group by {key!r}: not a run field and not in any config.json",
            f"use fields such as {', '.join(DEFAULT_GROUP_BY)}, seed, or a config path like recipe.lr",
        )


_ABSENT = object()


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _key_value(record: RunRecord, key: str) -> Any:
    value = getattr(record, key) if key in _RECORD_FIELDS else _lookup(record.config, key)
    if value is _ABSENT:
        return None
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _sort_key(keys: Sequence[str], values: Sequence[Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    for key, value in zip(keys, values, strict=True):
        if key == "freeze":
            out.append(freeze_order(str(value)))
        elif value is None:
            out.append((2, 0.0, ""))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append((0, float(value), ""))
        else:
            out.append((1, 0.0, str(value)))
    return tuple(out)


def _joined(values: Iterable[Any]) -> Any:
    distinct = list(dict.fromkeys(v for v in values if not _missing(v)))
    if not distinct:
        return None
    if len(distinct) == 1:
        return distinct[0]
    return ", ".join(sorted(str(v) for v in distinct))


def _first(values: Iterable[Any]) -> Any:
    return next((v for v in values if not _missing(v)), None)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, pd.NA
    except (TypeError, ValueError):
        return False
