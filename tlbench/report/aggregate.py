"""Aggregation: one table row per configuration, seeds pooled.

`aggregate` groups the `RunRecord`s of `tlbench.report.collect` by configuration (DEFAULT_GROUP_BY,
or record fields and config.json paths the user names) into a pandas DataFrame: means, sample
standard deviations, the zero-training baseline of the same backbone and class list, and the
leakage labels of the pooled runs.

Accuracies stay fractions in [0, 1] here; the renderers turn them into %. Importing this module is
cheap: pandas loads inside `aggregate`, torch never.
"""

from __future__ import annotations

import json
import math
import numbers
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from tlbench._util import is_missing
from tlbench.errors import UsageError
from tlbench.report.collect import NAN, RunRecord

if TYPE_CHECKING:
    import pandas as pd

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
    "select",
    "weights_source",
    "dataset",
    "class_list_hash",
)
"""What makes two runs the same configuration (everything but the seed).

`select` is the selection split held out of training (`none` for runs without one): a run that
trained on fewer images is another configuration.

`recipe_overrides` holds the recipe values that differ from the registered recipe of that name (lr,
batch size, ...), so a run with `--lr` changed is never pooled with the default. `dataset` names
the data form and split rule; `class_list_hash` the exact class list.
"""

METRICS = ("best_val_top1", "best_val_top5", "final_val_top1", "final_val_loss")
"""Aggregated as mean and sample standard deviation (ddof=1; NaN for a single value)."""

COLUMNS = (
    *DEFAULT_GROUP_BY,
    "n",
    "seeds",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")),
    "best_chosen_on",
    "select_images",
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
    "device_hours",
    "top1_per_device_hour",
    "projected_full_hours",
    "device",
    "run_dirs",
)
"""The columns of `aggregate`, in order (a custom group key's extra columns come first)."""

DIFFERENCE_COLUMNS = (
    "final_top1_ci_low",
    "final_top1_ci_high",
    "vs_best",
    "vs_best_diff",
    "vs_best_p",
    "vs_best_test",
    "vs_best_config",
    "stats_note",
)
"""What `stats.with_differences` adds after `COLUMNS` (described there as `stats.COLUMNS`); named
here, beside `COLUMNS`, so that `group_key_columns` can tell a custom group key from both."""

_INT_COLUMNS = (
    "image_size",
    "epochs",
    "n",
    "params_trainable",
    "params_total",
    "epochs_done",
    "stopped_early",
    "peak_memory_bytes",
    "select_images",
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
    - best_chosen_on: what the best epoch was chosen on, `select` (the selection split) or `val`
      (these validation images: optimistic); select_images: the selection split's size (the
      largest over seeds; None without one);
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
    row["best_chosen_on"] = _joined(r.best_chosen_on for r in group)
    sizes = [r.select_images for r in group if r.select_images is not None]
    row["select_images"] = max(sizes) if sizes else None
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
    # What a run costs: device-hours per run (wall time x devices), best top-1 per device-hour,
    # and the recipe's full schedule projected from the measured epochs.
    row["device_hours"] = mean_std([r.device_seconds / 3600 for r in group])[0]
    row["top1_per_device_hour"] = (
        row["best_val_top1_mean"] / row["device_hours"] if row["device_hours"] > 0 else NAN
    )
    row["projected_full_hours"] = mean_std([r.projected_full_seconds / 3600 for r in group])[0]
    row["device"] = _joined(r.device for r in group)
    row["run_dirs"] = ";".join(str(r.path) for r in group)
    return row


def group_key_columns(df: pd.DataFrame) -> list[str]:
    """The columns of a custom group key (`aggregate(..., group_by=...)`): those neither `aggregate`
    nor `stats.with_differences` makes, in table order."""
    return [c for c in df.columns if c not in COLUMNS and c not in DIFFERENCE_COLUMNS]


def row_runs(df: pd.DataFrame, records: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """Each row's records, from its `run_dirs` (paths joined by ";", which a path may hold too)."""
    by_path = {str(r.path): r for r in records}
    out = []
    for joined in df["run_dirs"]:
        runs, piece = [], []
        for token in str(joined).split(";"):
            piece.append(token)
            if (path := ";".join(piece)) in by_path:
                runs.append(by_path[path])
                piece = []
        out.append(runs)
    return out


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
