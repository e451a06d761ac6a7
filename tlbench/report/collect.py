"""From run directories to one table row per configuration.

`collect_runs` walks folders for run directories (a folder holding `config.json`) and reads each
finished one through `tlbench.rundir.RunDir` into a `RunRecord`: every value comes from the field the
run-directory schema puts it in, nothing is guessed. Anything it cannot use (unfinished, of another
schema version, damaged) becomes a `Skipped` with the reason, never an exception. `aggregate` groups
the records by configuration (seeds pooled) into a pandas DataFrame: means, sample standard
deviations, the zero-training baseline of the same backbone and class list, and the leakage flag of
`leakage_flag` (REFERENCE.md section 3).

Accuracies stay fractions in [0, 1] here, as in the run directory; the renderers turn them into %.
Importing this module is cheap: pandas loads inside `aggregate`, torch never.
"""

from __future__ import annotations

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

from tlbench._util import is_missing
from tlbench.errors import UsageError
from tlbench.rundir import CONFIG, SUMMARY, EpochMetrics, RunDir, RunFile, SchemaError, Summary

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

BASELINE_RECIPE = "baseline"
"""The `recipe` of a baseline record: it has no recipe, it evaluates the pretrained classifier."""

# Recipe fields that have a column of their own (or mean nothing for the result): not "overrides".
_RECIPE_OWN_COLUMNS = frozenset(
    {"name", "summary", "freeze", "epochs", "image_size", "pool", "normalize", "augment"}
)
_IMAGENET_WEIGHTS = re.compile(r"in1k|in21k|in22k|in12k|imagenet", re.IGNORECASE)
_RANDOM_WEIGHTS = re.compile(r"^\s*none\b|random init", re.IGNORECASE)


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
    train_images_per_sec: float
    infer_images_per_sec: float
    peak_memory_bytes: int | None
    device: str
    """The device name (the GPU's model for CUDA) and the precision, e.g. "NVIDIA H100, bf16"."""
    leakage: str
    run_file: RunFile | None = field(default=None, repr=False, compare=False)
    """config.json as read: the config as asked and what it resolved to (`--group-by` paths)."""
    summary: Summary | None = field(default=None, repr=False, compare=False)
    curves: dict[str, list[float]] = field(default_factory=dict, repr=False, compare=False)
    """metrics.csv, column by column (empty for a baseline)."""


# ----------------------------------------------------------------------------------------------
# The leakage rule


def weights_kind(weights_source: str | None) -> str:
    """Classify a recorded weights source as "random", "imagenet" or "unknown".

    "random": `none (random init)`, what a run without pretrained weights records. "imagenet": a
    source naming ImageNet pretraining, such as the timm hub tags `in1k`, `in21k_ft_in1k`, `in21k`,
    `in22k`, `in12k` (`timm hub: timm/vgg19.tv_in1k`). Anything else (a local weight file with a
    neutral name, a bare URL, weights pretrained on other data) is "unknown".
    """
    if not weights_source:
        return "unknown"
    if _RANDOM_WEIGHTS.search(weights_source):
        return "random"
    if _IMAGENET_WEIGHTS.search(weights_source):
        return "imagenet"
    return "unknown"


def is_synthetic(data_info: Mapping[str, Any]) -> bool:
    """True for tlbench's synthetic data (`data_info["synthetic"]`, or a `synthetic...` spec)."""
    return bool(data_info.get("synthetic")) or str(data_info.get("spec") or "").startswith("synthetic")


def leakage_flag(weights_source: str | None, data_info: Mapping[str, Any]) -> str:
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
        weights_source: The run's recorded weights source, e.g. "timm hub: timm/vgg19.tv_in1k" or
            "none (random init)".
        data_info: The recorded `resolved.data_info` (keys used: standard_mini_imagenet,
            synthetic, spec).

    Returns:
        One of the LEAK_* strings.
    """
    if is_synthetic(data_info):
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
        train_images_per_sec=_float(summary.train_images_per_sec),
        infer_images_per_sec=_float(summary.infer_images_per_sec),
        peak_memory_bytes=summary.peak_memory_bytes,
        device=device,
        leakage=leakage_flag(summary.weights_source, data_info),
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
    from tlbench.train.recipes import RECIPES  # dataclasses only: no torch

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
_RECORD_FIELDS = frozenset(f.name for f in fields(RunRecord)) - {"run_file", "summary", "curves"}


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
        group_by: Record fields (see RunRecord) or dotted config.json paths that define a
            configuration, looked up in the config as asked, then in what it resolved to (e.g.
            "recipe.lr", "split_seed", "data_info.format", "params.trainable").

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
            df[name] = pd.array([None if is_missing(v) else int(v) for v in df[name]], dtype="Int64")
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
    finite = [float(v) for v in values if not is_missing(v)]
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
        if not records or any(_lookup(r, key) is not _ABSENT for r in records):
            continue
        raise UsageError(
            f"cannot group by {key!r}: not a run field and not in any config.json",
            f"use fields such as {', '.join(DEFAULT_GROUP_BY)}, seed, or a config path like recipe.lr",
        )


_ABSENT = object()


def _lookup(record: RunRecord, dotted: str) -> Any:
    """A dotted path in config.json's `config` (as asked), else in its `resolved` part; or _ABSENT."""
    if record.run_file is None:
        return _ABSENT
    saved = record.run_file.to_dict()
    for node in (saved["config"], saved["resolved"]):
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                node = _ABSENT
                break
            node = node[part]
        if node is not _ABSENT:
            return node
    return _ABSENT


def _key_value(record: RunRecord, key: str) -> Any:
    value = getattr(record, key) if key in _RECORD_FIELDS else _lookup(record, key)
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
    distinct = list(dict.fromkeys(v for v in values if not is_missing(v)))
    if not distinct:
        return None
    if len(distinct) == 1:
        return distinct[0]
    return ", ".join(sorted(str(v) for v in distinct))


def _first(values: Iterable[Any]) -> Any:
    return next((v for v in values if not is_missing(v)), None)
