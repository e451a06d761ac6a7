"""A tuned or raced sweep in the report: each row's `tuned` values, its `tuning` summary and its
`race`, read from the sweep folder the row's runs are cells of.

- `tuned`: the recipe values the row's final runs took from their study (`{"lr": 3.2e-4}`);
- `tuning`: that study's budget and outcome (trials, their states, the device-seconds spent on
  them, the best selection top-1) and, where the same configuration was also run untuned (its
  recipe's own values), the default-versus-tuned difference of the headline top-1;
- `race`: in a sweep run with `--race`, whether the row's cells were stopped early, at which epoch,
  and why (`stopped_early` runs are rows of their own, after the finished ones).

Tuning trials are run directories too (`<sweep>/trials/`); they are never rows, only counted here.
Everything is read from files the sweep wrote (`tuning.json`, `manifest.json`): no Optuna, no sweep.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlbench._sweepdir import MANIFEST, TUNING, sweep_of
from tlbench._util import is_missing
from tlbench.report.aggregate import row_runs
from tlbench.report.collect import RunRecord

if TYPE_CHECKING:
    import pandas as pd

OBJECT_COLUMNS = ("tuned", "tuning", "race")
"""The columns `annotate` adds: JSON objects (None where they do not apply)."""

_SAME_CONFIGURATION = ("backbone", "recipe", "freeze", "image_size", "dataset", "class_list_hash")
"""What a tuned row and an untuned row share to be the same configuration, default against tuned."""


def split_records(records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[RunRecord], list[RunRecord]]:
    """(the runs that are rows, those stopped early by their sweep, the tuning trials)."""
    trials = [r for r in records if r.trial is not None]
    stopped = [r for r in records if r.trial is None and r.status == "stopped_early"]
    rows = [r for r in records if r.trial is None and r.status != "stopped_early"]
    return rows, stopped, trials


class _Folders:
    """tuning.json and manifest.json of each sweep folder, each read once."""

    def __init__(self) -> None:
        self._read: dict[tuple[Path, str], dict[str, Any]] = {}

    def file(self, folder: Path, name: str) -> dict[str, Any]:
        key = (folder, name)
        if key not in self._read:
            try:
                self._read[key] = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                self._read[key] = {}
        return self._read[key]

    def study(self, run: RunRecord) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(tuning.json, the study) of the run's configuration, or None for an untuned run."""
        folder = sweep_of(run.path)
        if folder is None:
            return None
        record = self.file(folder, TUNING)
        for study in record.get("studies", {}).values():
            if run.path.name in study.get("cells", []):
                return record, study
        return None

    def raced(self, run: RunRecord) -> bool:
        folder = sweep_of(run.path)
        return folder is not None and bool((self.file(folder, MANIFEST).get("race") or {}).get("race"))


def annotate(df: pd.DataFrame, records: Sequence[RunRecord]) -> pd.DataFrame:
    """`df` with the `tuned`, `tuning` and `race` columns (see the module docstring)."""
    import pandas as pd

    folders = _Folders()
    tuned, tuning, race = [], [], []
    for runs in row_runs(df, records) if len(df) else []:
        found = next((s for r in runs if (s := folders.study(r)) is not None), None)
        tuned.append(dict(found[1]["best"]["params"]) if found and found[1].get("best") else None)
        tuning.append(_summary(*found) if found else None)
        race.append(_race(runs, folders))
    out = df.copy()
    for name, values in zip(OBJECT_COLUMNS, (tuned, tuning, race), strict=True):
        out[name] = pd.Series(values, index=out.index, dtype=object)
    return _with_defaults(out)


def _summary(record: dict[str, Any], study: dict[str, Any]) -> dict[str, Any]:
    counts = study.get("counts", {})
    best = study.get("best") or {}
    return {
        "study": study.get("study"),
        "tuned": study.get("tuned"),
        "space": study.get("space"),
        "trials": study.get("trials"),
        "tune_epochs": study.get("tune_epochs"),
        "complete": counts.get("COMPLETE", 0),
        "pruned": counts.get("PRUNED", 0),
        "failed": counts.get("FAIL", 0),
        "device_seconds": study.get("device_seconds"),
        "best_trial": best.get("number"),
        "best_select_top1": best.get("value"),
        "refit": record.get("refit"),
        "history": [(t["number"], t["value"]) for t in study.get("history", []) if not t.get("interrupted")],
        "default_top1": None,
        "vs_default": None,
    }


def _race(runs: list[RunRecord], folders: _Folders) -> dict[str, Any] | None:
    stopped = [r for r in runs if r.status == "stopped_early"]
    if stopped:
        first = min(stopped, key=lambda r: r.epochs_done or 0)
        saved = sum(saved_seconds(r) for r in stopped)
        return {
            "stopped": True,
            "epoch": first.epochs_done,
            "reason": first.stop_reason,
            "saved_device_seconds": round(saved, 3),
        }
    if any(folders.raced(r) for r in runs):
        return {"stopped": False, "epoch": None, "reason": None, "saved_device_seconds": 0.0}
    return None


def saved_seconds(run: RunRecord) -> float:
    """The device-seconds a race saved by stopping `run`: the epochs it did not run times its mean
    epoch time (its device-seconds, or wall seconds where those are unknown, over the epochs it ran)."""
    if not run.epochs or not run.epochs_done or run.epochs_done >= run.epochs:
        return 0.0
    spent = run.device_seconds if not is_missing(run.device_seconds) else run.wall_seconds
    if is_missing(spent):
        return 0.0
    return (run.epochs - run.epochs_done) * float(spent) / run.epochs_done


def race_note(df: pd.DataFrame) -> str | None:
    """The race's summary for the notes: the cells stopped and the device-seconds saved; None unraced."""
    if "race" not in df:
        return None
    races = [r for r in df["race"] if isinstance(r, dict)]
    if not races:
        return None
    stopped = [r for r in races if r.get("stopped")]
    saved = sum(r.get("saved_device_seconds") or 0.0 for r in stopped)
    return (
        f"race: {len(stopped)} of {len(races)} configuration(s) stopped early, behind the leader on the "
        f"selection split; that saved {saved:,.0f} device-seconds (the epochs each stopped run did not "
        "run x its mean epoch time; per row: race.saved_device_seconds in --format json)."
    )


def _with_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """Each tuned row's `tuning` with the untuned row of the same configuration: its top-1 and the
    difference (tuned minus default, as fractions), where the report holds one."""
    for _, row in df.iterrows():
        summary = row["tuning"]
        if not summary:
            continue
        same = df[
            df["tuning"].isna() & df["race"].map(lambda r: not (r or {}).get("stopped")) & _matches(df, row)
        ]
        if len(same) and not is_missing(same.iloc[0]["best_val_top1_mean"]):
            default = float(same.iloc[0]["best_val_top1_mean"])
            summary["default_top1"] = default
            summary["vs_default"] = float(row["best_val_top1_mean"]) - default
    return df


def _matches(df: pd.DataFrame, row: Any) -> Any:
    mask = df["backbone"] == row["backbone"]
    for column in _SAME_CONFIGURATION[1:]:
        mask &= df[column].astype(str) == str(row[column])
    return mask


SHORT_NAMES = {"weight_decay": "wd", "label_smoothing": "ls", "warmup_epochs": "warmup"}
"""How the human tables abbreviate a tuned value's name (`lr 3.2e-4, wd 1e-3`)."""


def number_text(value: float) -> str:
    """A tuned value in two significant digits, small ones with a short exponent: `3.2e-4`, `0.05`."""
    if value == 0 or 1e-2 <= abs(value) < 1e3:
        return f"{value:.2g}"
    mantissa, _, exponent = f"{value:.1e}".partition("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def values_text(tuned: dict[str, Any]) -> str:
    """`lr 3.2e-4, wd 1e-3`: the chosen values, each name short (`SHORT_NAMES`)."""
    return ", ".join(f"{SHORT_NAMES.get(k, k)} {number_text(float(v))}" for k, v in tuned.items())


def best_so_far(history: Sequence[Sequence[Any]]) -> tuple[list[int], list[float]]:
    """(trial numbers from 1, the best selection top-1 up to each): a `tuning.history` of (number,
    value) pairs in trial order, a pruned or failed trial's value None (it keeps the best so far)."""
    trials, best = [], []
    top = float("nan")
    for number, value in sorted(history, key=lambda t: t[0]):
        if value is not None and not (value <= top):  # the first value, or a better one
            top = float(value)
        trials.append(int(number) + 1)
        best.append(top)
    return trials, best


def tuned_text(tuned: Any, tuning: Any) -> str:
    """`lr 3.2e-4, wd 1e-3 (16 trials)` for the human tables; `-` for an untuned row."""
    if not isinstance(tuned, dict) or not isinstance(tuning, dict):
        return "-"
    values = values_text(tuned)
    diff = tuning.get("vs_default")
    versus = f", {100 * diff:+.1f} pts vs default" if isinstance(diff, int | float) else ""
    return f"{values} ({tuning.get('trials')} trials{versus})"
