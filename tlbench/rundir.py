"""The run directory: its files, their schema, and the only code that writes or reads them.

A run directory (one `tlbench run`, one `tlbench baseline`, one sweep cell) holds:

| file | written | what |
| --- | --- | --- |
| `config.json` | at the start | `RunFile`: schema version, kind, the config as asked, what it resolved to |
| `env.json` | at the start | versions, devices, commit (`tlbench.train.env.environment`) |
| `structure.json` | at the start (runs) | the architecture layer by layer |
| `checkpoint.pt` | every epoch (runs) | model, optimizer, scheduler, scaler, history; removed at the end |
| `metrics.csv` | every epoch (runs) | one `EpochMetrics` row per epoch |
| `select_predictions.csv` | every epoch (`--select`) | one `Prediction` per selection image (latest epoch) |
| `stop.json` | by its sweep | `{"reason"}`: stop at the next batch, with status `stopped_early` |
| `per_class.csv` | at the end | one `ClassRow` per class: the final validation accuracy per class |
| `predictions.csv` | at the end | one `Prediction` per validation image: its label and the predicted class |
| `train_validation_{acc,loss}.png` | at the end (runs) | curves, named as the original recipe named them |
| `model/` | at the end (runs) | the exported model (`tlbench.load_model`) |
| `summary.json` | last | `Summary`: the run is complete when this file exists |

Every write is atomic. `SCHEMA_VERSION` changes whenever a field changes meaning or goes away; a
run directory of another schema is refused with `SchemaError`, which says which version wrote it.
Readers never guess: what is read is what a writer here wrote. Importing this module is cheap
(torch loads only for checkpoints). It is one module, past the usual ~400 lines, on purpose: the
whole schema (records, their file forms, the version rule) is read in one place.
"""

from __future__ import annotations

import csv
import io
import json
import math
import typing
from collections.abc import Iterable
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from tlbench._io import FolderLock, write_error, write_json, write_text, write_with
from tlbench._util import first_line
from tlbench.config.records import (
    SCHEMA_VERSION,
    BaselineConfig,
    ClassRow,
    EpochMetrics,
    Kind,
    Prediction,
    Resolved,
    RunFile,
    Status,
    Summary,
)
from tlbench.errors import OutputError

__all__ = [
    "SCHEMA_VERSION",
    "BaselineConfig",
    "ClassRow",
    "EpochMetrics",
    "Kind",
    "Prediction",
    "Resolved",
    "RunDir",
    "RunFile",
    "SchemaError",
    "Status",
    "Summary",
]

CONFIG = "config.json"
ENV = "env.json"
STRUCTURE = "structure.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
PER_CLASS = "per_class.csv"
PREDICTIONS = "predictions.csv"
SELECT_PREDICTIONS = "select_predictions.csv"
STOP_REQUEST = "stop.json"
SUMMARY = "summary.json"
MODEL_DIR = "model"
ACC_PLOT = "train_validation_acc.png"
LOSS_PLOT = "train_validation_loss.png"

T = TypeVar("T")


class SchemaError(OutputError):
    """A folder that is not a run directory this tlbench can read (older or newer schema, or damaged)."""


# -- (de)serialising ------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """NaN and infinities become None, so every file is valid JSON / an empty CSV cell."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _build(cls: type[T], values: dict[str, Any], where: str) -> T:
    """A record from a dict: extra keys are refused, missing ones fall back to defaults or fail, and
    each value must have its field's type (`_check_types`)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    extra = sorted(set(values) - known)
    if extra:
        raise SchemaError(f"{where} has unknown field(s) {', '.join(extra)}", _NEWER_HINT)
    _check_types(cls, values, where)
    try:
        return cls(**values)
    except TypeError as exc:
        raise SchemaError(f"{where} is incomplete ({exc})", _DAMAGED_HINT) from None


def _check_types(cls: type, values: dict[str, Any], where: str) -> None:
    """Each value of `values` has the JSON type of its field in dataclass `cls`: an int where an int
    goes (never a bool or a string such as "2"), a number where a float goes, text for text, an object
    or a list for a mapping or a sequence; None only where the field allows it. A literal's choices
    are the record's own check. A value of the wrong type is a damaged file, refused here, so no
    reader later compares "2" with 3.

    Raises:
        SchemaError: The first field whose value has the wrong type, named with its value.
    """
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        tp = hints.get(name, Any)
        if not _has_type(value, tp):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise SchemaError(f"{where}: {name} holds {shown}, not {_type_name(tp)}", _DAMAGED_HINT)


def _has_type(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or origin is typing.Literal:
        return not isinstance(value, dict | list)
    if args and origin not in (dict, list, tuple):  # a union: `int | None`
        return any(_has_type(value, t) for t in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if (origin or tp) is dict:
        return isinstance(value, dict)
    if (origin or tp) in (list, tuple):
        return isinstance(value, list | tuple)
    return True  # a nested record (`RunConfig.recipe`): checked as its own class


def _type_name(tp: Any) -> str:
    args = [t for t in typing.get_args(tp) if t is not type(None)]
    base = args[0] if len(args) == 1 and typing.get_origin(tp) is not typing.Literal else tp
    names = {int: "an integer", float: "a number", str: "text", bool: "true or false"}
    return names.get(base, "a " + getattr(typing.get_origin(base) or base, "__name__", str(base)))


_NEWER_HINT = "it was written by another tlbench version: report it with that version"
_DAMAGED_HINT = "the folder is damaged or not a tlbench run directory"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


def _csv_text(rows: Iterable[Any], cls: type) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(cls)], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in asdict(row).items()})
    return buffer.getvalue()


def _parse(text: str, tp: Any) -> Any:
    """A CSV cell as the field's type: '' is None; int, float, str as annotated."""
    if text == "":
        return None
    base = next((t for t in typing.get_args(tp) if t is not type(None)), tp) if typing.get_args(tp) else tp
    if base is int:
        return int(float(text))
    if base is float:
        return float(text)
    return text


def _read_csv(path: Path, cls: type[T]) -> list[T]:
    """Rows of `cls` from a CSV with its columns in order; a file written before trailing columns
    with defaults existed (metrics.csv before the selection split) lacks them and gets the defaults."""
    hints = typing.get_type_hints(cls)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SchemaError(f"cannot read {path} ({exc})", _DAMAGED_HINT) from None
    expected = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    optional = {f.name for f in fields(cls) if f.default is not MISSING}  # type: ignore[arg-type]
    older = header == expected[: len(header)] and set(expected[len(header) :]) <= optional
    if header != expected and not older:
        raise SchemaError(f"{path} has columns {header}, expected {expected}", _NEWER_HINT)
    try:
        return [cls(**{k: _parse(row[k] or "", hints[k]) for k in header}) for row in rows]
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{path} holds a malformed row ({exc})", _DAMAGED_HINT) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"{path} is missing", _DAMAGED_HINT) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read {path} ({exc})", _DAMAGED_HINT) from None
    if not isinstance(value, dict):
        raise SchemaError(f"{path} is not a JSON object", _DAMAGED_HINT)
    return value


def _read_versioned(path: Path) -> dict[str, Any]:
    """A JSON object of this schema version (`SchemaError` for another version)."""
    values = _read_json(path)
    version = values.get("schema_version")
    if version == SCHEMA_VERSION:
        return values
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} uses run-directory schema {version}; this tlbench reads schema {SCHEMA_VERSION}",
            "upgrade tlbench to read it",
        )
    raise SchemaError(
        f"{path.parent} was written by an older tlbench (run-directory schema {version or 1}); "
        f"this tlbench reads schema {SCHEMA_VERSION}",
        "report it with the tlbench that wrote it, or run it again",
    )


# -- the folder -----------------------------------------------------------------------------------


class RunDir:
    """One run directory: typed writers and readers for each of its files.

    Args:
        path: The folder (it need not exist yet; `create` makes it).

    Attributes:
        path: The folder.
        created: Whether `create` made the folder (`discard` then removes it too).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.created = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def create(cls, path: str | Path) -> RunDir:
        """A new, empty run directory, claimed by this process (see `claim`); never one that holds
        files (results are never overwritten).

        Claiming comes before the emptiness check, so of two runs started together on one folder,
        exactly one gets it: the other is refused while the first lives, and finds its files after.

        Raises:
            OutputError: `path` is a file, is claimed by a live process, holds files (with how to
                resume it, where it can be), or is not writable.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path} is a file, not a folder", "choose a new folder for the run")
        created = not path.exists()
        run = cls(path).claim()
        run.created = created
        if any(p.name != FolderLock.NAME for p in path.iterdir()):
            run.release()
            hint = (
                f"resume it with: tlbench run --resume {path}"
                if run.has_checkpoint and not run.finished
                else "choose another --out"
            )
            raise OutputError(f"{path} already holds files", hint)
        return run

    def discard(self) -> None:
        """Remove what a run that never reached its first checkpoint wrote (it claimed the folder
        empty), and the folder itself when `create` made it: a failed start leaves no half run."""
        import shutil

        for entry in self.path.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name != FolderLock.NAME:
                entry.unlink()
        if self.created:
            self.release()
            (self.path / FolderLock.NAME).unlink(missing_ok=True)
            self.path.rmdir()

    def claim(self) -> RunDir:
        """Hold this run directory for the life of the process (an exclusive lock the kernel drops
        when the process ends, `kill -9` included); a second claimant gets OutputError (exit 6)."""
        self._lock.acquire()
        return self

    def release(self) -> None:
        """Give up the claim (the process ending does the same)."""
        self._lock.release()

    def holder(self) -> int | None:
        """The pid of a live process that holds this run directory, or None."""
        return self._lock.holder() if self.path.is_dir() else None

    @property
    def _lock(self) -> FolderLock:
        if not hasattr(self, "_folder_lock"):
            self._folder_lock = FolderLock(self.path, "run directory")
        return self._folder_lock

    # -- state ------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The run is complete: its summary.json exists (it is written last)."""
        return (self.path / SUMMARY).is_file()

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    @property
    def is_run_dir(self) -> bool:
        """The folder holds a config.json (a run directory of some schema, finished or not)."""
        return (self.path / CONFIG).is_file()

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    # -- config.json, env.json, structure.json ----------------------------------------------------

    def write_config(self, run_file: RunFile) -> None:
        write_json(self.path / CONFIG, _finite(run_file.to_dict()))

    def read_config(self) -> RunFile:
        """config.json as a `RunFile` (its `config` a `RunConfig` or a `BaselineConfig`).

        Raises:
            SchemaError: Missing, unreadable, of another schema version, or malformed.
        """
        from tlbench.config.recipe import Recipe
        from tlbench.config.run import RunConfig
        from tlbench.errors import UsageError

        path = self.path / CONFIG
        values = _read_versioned(path)
        kind = values.get("kind")
        if kind not in ("run", "baseline"):
            raise SchemaError(f"{path} has kind {kind!r}, not run or baseline", _DAMAGED_HINT)
        raw = values.get("config")
        if not isinstance(raw, dict) or not isinstance(values.get("resolved"), dict):
            raise SchemaError(f"{path} lacks its config or resolved part", _DAMAGED_HINT)
        if kind == "run":
            _check_types(RunConfig, raw, f"{path} (config)")
            recipe = raw.get("recipe")
            _check_types(Recipe, recipe if isinstance(recipe, dict) else {}, f"{path} (recipe)")
        try:
            config = RunConfig.from_dict(raw) if kind == "run" else _build(BaselineConfig, raw, str(path))
        except (UsageError, TypeError, KeyError) as exc:
            raise SchemaError(f"{path} holds a config this tlbench cannot use ({exc})", _NEWER_HINT) from None
        resolved = _build(Resolved, values["resolved"], f"{path} (resolved)")
        return RunFile(kind=kind, config=config, resolved=resolved)

    def write_env(self, env: dict[str, Any]) -> None:
        write_json(self.path / ENV, env)

    def read_env(self) -> dict[str, Any]:
        return _read_json(self.path / ENV)

    def write_structure(self, structure: dict[str, Any]) -> None:
        write_json(self.path / STRUCTURE, structure)

    # -- metrics.csv, per_class.csv ---------------------------------------------------------------

    def write_metrics(self, rows: Iterable[EpochMetrics]) -> None:
        write_text(self.path / METRICS, _csv_text(rows, EpochMetrics))

    def read_metrics(self) -> list[EpochMetrics]:
        """metrics.csv, one row per finished epoch; [] before the first epoch ends."""
        if not (self.path / METRICS).is_file():
            return []
        return _read_csv(self.path / METRICS, EpochMetrics)

    def write_per_class(self, rows: Iterable[ClassRow]) -> None:
        write_text(self.path / PER_CLASS, _csv_text(rows, ClassRow))

    def read_per_class(self) -> list[ClassRow]:
        return _read_csv(self.path / PER_CLASS, ClassRow)

    def write_predictions(self, rows: Iterable[Prediction]) -> None:
        write_text(self.path / PREDICTIONS, _csv_text(rows, Prediction))

    def read_predictions(self) -> list[Prediction]:
        """The final validation predictions, in validation-split order."""
        return _read_csv(self.path / PREDICTIONS, Prediction)

    def write_select_predictions(self, rows: Iterable[Prediction]) -> None:
        write_text(self.path / SELECT_PREDICTIONS, _csv_text(rows, Prediction))

    def read_select_predictions(self) -> list[Prediction]:
        """The latest epoch's selection-split predictions, in selection-split order; [] before one."""
        if not (self.path / SELECT_PREDICTIONS).is_file():
            return []
        return _read_csv(self.path / SELECT_PREDICTIONS, Prediction)

    def request_stop(self, reason: str) -> None:
        """Ask the run training here to stop at its next batch, back to its last whole epoch, with
        status `stopped_early` and this reason (a sweep's race or tuning pruner)."""
        write_json(self.path / STOP_REQUEST, {"reason": reason})

    def stop_requested(self) -> str | None:
        """The reason of a stop request (`request_stop`), or None."""
        try:
            return str(json.loads((self.path / STOP_REQUEST).read_text())["reason"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- summary.json -----------------------------------------------------------------------------

    def write_summary(self, summary: Summary) -> None:
        """Write summary.json (last: from here on the run directory is complete)."""
        write_json(self.path / SUMMARY, _finite(asdict(summary)))

    def read_summary(self) -> Summary:
        """summary.json as a `Summary`.

        Raises:
            SchemaError: Missing, unreadable, of another schema version, or malformed.
        """
        path = self.path / SUMMARY
        return _build(Summary, _read_versioned(path), str(path))

    # -- figures, checkpoint ----------------------------------------------------------------------

    def write_figure(self, name: str, figure: Any) -> None:
        """A matplotlib figure as PNG (`ACC_PLOT`, `LOSS_PLOT`)."""
        write_with(self.path / name, lambda tmp: figure.savefig(tmp, format="png"))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """The training state (tensors, numbers, strings, lists and dicts of them), atomically."""
        import torch

        try:
            write_with(self.path / CHECKPOINT, lambda tmp: torch.save(state, tmp))
        except RuntimeError as exc:  # torch's writer reports a full disk as a RuntimeError
            raise write_error(self.path / CHECKPOINT, exc) from exc

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any]:
        """The training state, loaded without unpickling code (`weights_only=True`).

        Raises:
            SchemaError: Missing, damaged, or holding anything but tensors and plain values.
        """
        import pickle

        import torch

        path = self.path / CHECKPOINT
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise SchemaError(
                f"cannot load {path} ({first_line(exc, 160)})", "the checkpoint is damaged: start a new run"
            ) from None
        if not isinstance(state, dict):
            raise SchemaError(f"{path} does not hold a training state", "start a new run")
        return state

    def drop_checkpoint(self) -> None:
        (self.path / CHECKPOINT).unlink(missing_ok=True)
