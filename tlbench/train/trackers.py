"""Trackers: a run's numbers also sent to TensorBoard or MLflow (`tlbench run --log tensorboard,mlflow`).

The run directory stays the record (`tlbench.rundir`); a tracker is a copy for the tools people
already use to watch and compare runs. The trainer (rank 0 only) drives every tracker the same way:

    trackers = Trackers(make_trackers(cfg.log))   # checks the names and that the extras are installed
    trackers.start(run_dir, cfg.to_dict(), asdict(resolved))   # new and resumed runs
    trackers.log_epoch(row)                 # each EpochMetrics row, after metrics.csv and the checkpoint
    trackers.finish(summary, model_dir)     # after summary.json; model_dir None if diverged

- `tensorboard` (`pip install 'tlbench[tensorboard]'`): event files in `<run_dir>/tensorboard/`:
  per-epoch scalars (`train/loss`, `val/top1`, `lr`, ...), the run config as HParams, the summary.
- `mlflow` (`pip install 'tlbench[mlflow]'`): to `$MLFLOW_TRACKING_URI`, else to
  `sqlite:///results/mlflow/mlflow.db` (artifacts beside it): params, per-epoch metrics, the
  summary, config.json, summary.json and the exported model.

MLflow 3 refuses its old `file:` store unless told otherwise, so the default store is MLflow's
own recommended local form, one SQLite file for every run started from this working directory.
A tracker is a guest. A store that cannot be used at the start (an MLflow database that is not one,
a `results` that is a file, an unknown `MLFLOW_TRACKING_URI` scheme) is one `tlbench: error:` line
(exit 6) before training; a tracker that fails during the run (its folder became unwritable, its
server went away) is dropped with a warning, and the run goes on and finishes with all its own
files (`Trackers`). Epochs are logged after the checkpoint, so metrics.csv and the checkpoint always
agree whatever a tracker does.

A resumed run continues the same TensorBoard folder (epochs from the resume point on replace any
logged before) and the same MLflow run (found by its `tlbench.run_dir` tag).

Importing this module is cheap: TensorBoard (through torch) and MLflow load when a tracker starts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol

from tlbench import options
from tlbench._console import say
from tlbench._util import first_line
from tlbench.config.run import check_log
from tlbench.errors import OutputError, TlbenchError, UsageError
from tlbench.rundir import EpochMetrics, Summary

TENSORBOARD_DIR = "tensorboard"
"""The run directory's subfolder of TensorBoard event files (`tensorboard --logdir results/`)."""
MLFLOW_DIR = options.RESULTS_DIR / "mlflow"
"""The default MLflow store: `mlflow.db` and `artifacts/` (relative to the working directory)."""
MLFLOW_EXPERIMENT = "tlbench"
"""The MLflow experiment of every run, unless `$MLFLOW_EXPERIMENT_NAME` names another."""
RUN_DIR_TAG = "tlbench.run_dir"
"""The MLflow tag that ties a run to its run directory (a resumed run finds its MLflow run by it)."""


class Tracker(Protocol):
    """What the trainer calls on every tracker, on rank 0, in this order."""

    name: str

    def start(self, run_dir: Path, config: dict[str, Any], resolved: dict[str, Any]) -> None:
        """A run (new or resumed) begins: `config` is `RunConfig.to_dict()`, `resolved` the
        `Resolved` record as a dict (as config.json holds them)."""

    def log_epoch(self, row: EpochMetrics) -> None:
        """One finished epoch (the row just written to metrics.csv)."""

    def finish(self, summary: Summary, model_dir: Path | None) -> None:
        """The run ended (summary.json is written); `model_dir` is the exported model, None when the
        run has none (diverged). Closes the tracker."""


_MODULE = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
"""The module each tracker imports (what its extra installs)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module hidden in sys.modules
        return False


def require(names: Iterable[str]) -> None:
    """Every tracker in `names` can run here.

    Raises:
        UsageError: A tracker whose extra is not installed (exit 2), naming the pip command.
    """
    for name in names:
        if not _installed(_MODULE[name]):
            raise UsageError(
                f"--log {name} needs the {name} package, which is not installed",
                f"pip install 'tlbench[{name}]'",
            )


def make_trackers(names: Iterable[str] | str | None) -> list[Tracker]:
    """The trackers of `RunConfig.log`, checked and ready to `start`.

    Raises:
        ConfigError: An unknown tracker name.
        UsageError: A tracker's extra is not installed.
    """
    checked = check_log(names)
    require(checked)
    kinds: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
    return [kinds[name]() for name in checked]


class Trackers:
    """The run's trackers, each a guest: `start` may refuse the run (a store it cannot use is a
    `TlbenchError` before training), but a tracker that fails later is dropped with a warning and
    never stops the run, whose own files are the record.

    Args:
        trackers: From `make_trackers` (empty on every rank but 0).
    """

    def __init__(self, trackers: Iterable[Tracker] = ()) -> None:
        self.active = list(trackers)

    def __len__(self) -> int:
        return len(self.active)

    def start(self, run_dir: Path, config: dict[str, Any], resolved: dict[str, Any]) -> None:
        for tracker in self.active:
            tracker.start(run_dir, config, resolved)

    def log_epoch(self, row: EpochMetrics) -> None:
        self._each("log_epoch", row)

    def finish(self, summary: Summary, model_dir: Path | None) -> None:
        self._each("finish", summary, model_dir)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a guest's failure of any kind (not Ctrl-C): drop it, go on
                self.active.remove(tracker)
                warnings.warn(
                    f"--log {tracker.name} failed ({first_line(exc, 160)}); it is dropped and the run "
                    "goes on with its own files (metrics.csv, checkpoint, summary.json)",
                    stacklevel=2,
                )


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config values as `{"recipe.lr": 0.0001, ...}`: scalars kept, None as "none", short lists
    as text; long lists (class names) left out. What both trackers record as hyperparameters."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_params(value, f"{name}.")
        elif isinstance(value, list | tuple):
            if len(value) <= 8:
                out[name] = ",".join(map(str, value))
        elif value is None:
            out[name] = "none"
        elif isinstance(value, bool | int | float | str):
            out[name] = value
    return out


def _run_params(config: dict[str, Any], resolved: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The hyperparameters of a run: its whole config, and what it resolved to that tells runs apart."""
    kept = ("data_info", "weights_source", "device", "amp", "params", "freeze_index", "distributed")
    return flat_params(config) | flat_params({k: resolved.get(k) for k in kept if k in resolved}, "resolved.")


def _epoch_values(row: EpochMetrics) -> dict[str, float]:
    """The numbers of a metrics.csv row, by column name (None, such as an unmeasured speed, left out)."""
    return {
        f.name: float(v) for f in fields(row) if f.name != "epoch" and (v := getattr(row, f.name)) is not None
    }


def _summary_values(summary: Summary) -> dict[str, float]:
    """The numbers of summary.json (bools and text left out)."""
    return {
        k: float(v)
        for k, v in asdict(summary).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "schema_version"
    }


# -- TensorBoard ----------------------------------------------------------------------------------


def tensorboard_tag(column: str) -> str:
    """metrics.csv's column as a TensorBoard tag, grouped by split: `val_top1` -> `val/top1`."""
    return column.replace("_", "/", 1) if column.startswith(("train_", "val_")) else column


class TensorBoardTracker:
    """Per-epoch scalars, the run config as HParams, and the summary, in `<run_dir>/tensorboard/`.

    The writer opens at the first epoch logged, with `purge_step` at that epoch: a resumed run's
    epochs replace any that an interrupted process logged past its last checkpoint.
    """

    name = "tensorboard"

    def __init__(self) -> None:
        self.log_dir: Path | None = None
        self.writer: Any = None
        self.params: dict[str, bool | int | float | str] = {}

    def start(self, run_dir: Path, config: dict[str, Any], resolved: dict[str, Any]) -> None:
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.params = _run_params(config, resolved)
        say(f"tensorboard: logging to {self.log_dir} (view: tensorboard --logdir {run_dir})", soft_wrap=True)

    def _open(self, first_step: int) -> Any:
        from tensorboard.plugins.hparams import plugin_data_pb2
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            assert self.log_dir is not None, "start() first"
            self.writer = SummaryWriter(str(self.log_dir), purge_step=first_step)
            start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
            for key, value in self.params.items():
                if isinstance(value, bool):
                    start.hparams[key].bool_value = value
                elif isinstance(value, int | float):
                    start.hparams[key].number_value = value
                else:
                    start.hparams[key].string_value = value
            self.writer.file_writer.add_summary(_hparams_summary(session_start_info=start))
        return self.writer

    def log_epoch(self, row: EpochMetrics) -> None:
        writer = self._open(row.epoch)
        for column, value in _epoch_values(row).items():
            writer.add_scalar(tensorboard_tag(column), value, row.epoch)
        writer.flush()

    def finish(self, summary: Summary, model_dir: Path | None) -> None:
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        writer = self._open(summary.epochs + 1)
        for key, value in _summary_values(summary).items():
            writer.add_scalar(f"summary/{key}", value, summary.epochs)
        status = api_pb2.STATUS_FAILURE if summary.status == "diverged" else api_pb2.STATUS_SUCCESS
        end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
        writer.file_writer.add_summary(_hparams_summary(session_end_info=end))
        writer.close()
        self.writer = None


def _hparams_summary(**data: Any) -> Any:
    """A summary for TensorBoard's HParams dashboard (its own protos; its summary API needs TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary as SummaryProto
    from tensorboard.compat.proto.summary_pb2 import SummaryMetadata
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    tag = metadata.SESSION_START_INFO_TAG if "session_start_info" in data else metadata.SESSION_END_INFO_TAG
    return SummaryProto(value=[SummaryProto.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])


# -- MLflow ---------------------------------------------------------------------------------------


def mlflow_tracking_uri() -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment): `$MLFLOW_TRACKING_URI` as MLflow
    reads it (the server's or the store's own artifact location), else the local default store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    root = MLFLOW_DIR.absolute()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


class MlflowTracker:
    """Params (the whole config), per-epoch metrics (metrics.csv's columns, step = epoch), the summary
    (`summary.*` metrics, a `tlbench.status` tag), config.json and the exported model as artifacts."""

    name = "mlflow"

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None

    def start(self, run_dir: Path, config: dict[str, Any], resolved: dict[str, Any]) -> None:
        """Open the store and the run (or find the resumed run's).

        Raises:
            OutputError: The store cannot be used (exit 6, before training), naming it and the fix.
        """
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "creating tables" chatter
        self.run_dir = Path(run_dir).absolute()
        store = os.environ.get("MLFLOW_TRACKING_URI") or str(MLFLOW_DIR / "mlflow.db")
        try:
            self._start(config, resolved)
        except TlbenchError:
            raise
        except Exception as exc:  # MlflowException, sqlalchemy's errors, OSError: the store's fault
            raise OutputError(
                f"--log mlflow cannot use the MLflow store {store} ({first_line(exc, 160)})",
                "repair or remove it, set MLFLOW_TRACKING_URI to a store you can write to, "
                "or run without --log mlflow",
            ) from None

    def _start(self, config: dict[str, Any], resolved: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        assert self.run_dir is not None
        uri, artifacts = mlflow_tracking_uri()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or MLFLOW_EXPERIMENT
        with _local_store_lock(artifacts is not None):  # a sweep's cells share the store
            self.client = MlflowClient(tracking_uri=uri)  # the first one creates its tables
            experiment = self._experiment(name, artifacts)
        found = (
            self.client.search_runs(
                [experiment], filter_string=f"tags.`{RUN_DIR_TAG}` = '{self.run_dir}'", max_results=1
            )
            if "'" not in str(self.run_dir)  # not expressible in a filter: such a run starts anew
            else []
        )
        if found:  # a resumed run: the same MLflow run, its params already there
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self._new_run(experiment, config, resolved)
        say(f"mlflow: logging to run {self.run_id} in {uri}", soft_wrap=True)

    def _new_run(self, experiment: str, config: dict[str, Any], resolved: dict[str, Any]) -> str:
        from mlflow.entities import Param

        assert self.run_dir is not None
        tags = {RUN_DIR_TAG: str(self.run_dir), "tlbench.backbone": str(config.get("backbone"))}
        tags["tlbench.recipe"] = str((config.get("recipe") or {}).get("name"))
        run_id = str(self.client.create_run(experiment, run_name=self.run_dir.name, tags=tags).info.run_id)
        params = [Param(k, str(v)[:6000]) for k, v in _run_params(config, resolved).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params[i : i + 100])
        return run_id

    def _experiment(self, name: str, artifacts: str | None) -> str:
        """The experiment's id, created if needed (a sweep's cells may race to create it)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=artifacts))
        except MlflowException:  # another process created it first
            return str(self.client.get_experiment_by_name(name).experiment_id)

    def log_epoch(self, row: EpochMetrics) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(k, v, now, row.epoch) for k, v in _epoch_values(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: Summary, model_dir: Path | None) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [
            Metric(f"summary.{k}", v, now, summary.epochs) for k, v in _summary_values(summary).items()
        ]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.set_tag(self.run_id, "tlbench.status", summary.status)
        assert self.run_dir is not None
        for name in ("config.json", "summary.json"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if model_dir is not None and Path(model_dir).is_dir():
            self.client.log_artifacts(self.run_id, str(model_dir), "model")
        self.client.set_terminated(self.run_id, "FAILED" if summary.status == "diverged" else "FINISHED")


@contextmanager
def _local_store_lock(local: bool) -> Iterator[None]:
    """Hold `results/mlflow/.lock` while the local store is opened: of the processes of a sweep that
    start together, one creates the tables and the experiment, and the others wait for it."""
    if not local:
        yield
        return
    import fcntl

    with (MLFLOW_DIR / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _now_ms() -> int:
    return int(time.time() * 1000)
