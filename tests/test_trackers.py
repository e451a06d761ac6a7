"""Trackers (`--log tensorboard,mlflow`), driven as the trainer drives them and read back with each
library's own reader: TensorBoard's EventAccumulator, MLflow's MlflowClient."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tlbench.errors import ConfigError, UsageError
from tlbench.rundir import EpochMetrics, Summary
from tlbench.train.trackers import check_log, make_trackers

CONFIG: dict[str, Any] = {
    "backbone": "vgg19",
    "recipe": {"name": "keras-vgg19", "lr": 1e-4, "epochs": 3, "augment": "keras", "nesterov": False},
    "freeze": "11",
    "seed": 1,
    "data": "synthetic",
    "max_time": None,
    "log": ["tensorboard", "mlflow"],
}
RESOLVED: dict[str, Any] = {
    "classes": ["n0", "n1"],
    "weights_source": "none (random init)",
    "device": "cpu",
    "amp": "off",
    "params": {"total": 1000, "trainable": 400, "frozen": 600},
}


def _row(epoch: int, val_top1: float) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch,
        train_loss=2.0 / epoch,
        train_top1=0.2 * epoch,
        val_loss=2.5 / epoch,
        val_top1=val_top1,
        val_top5=0.9,
        lr=1e-4,
        epoch_seconds=3.0,
        train_seconds=2.0,
        data_seconds=0.5,
        train_images_per_sec=None if epoch == 1 else 100.0,
    )


def _summary(epochs: int, status: str = "finished") -> Summary:
    return Summary(
        kind="run",
        status=status,  # type: ignore[arg-type]
        best_val_top1=0.5,
        best_epoch=epochs,
        final_val_top1=0.5,
        final_val_top5=0.9,
        final_val_loss=1.2,
        val_images=40,
        epochs=epochs,
        params_total=1000,
        params_trainable=400,
        params_frozen=600,
        wall_seconds=9.5,
        train_images_per_sec=100.0,
        infer_images_per_sec=300.0,
        peak_memory_bytes=None,
        device="cpu",
        amp="off",
        weights_source="none (random init)",
    )


def _run_dir(tmp_path: Path) -> Path:
    """A run directory with what a finished run leaves for the trackers: config.json and the model."""
    run_dir = tmp_path / "runs" / "20261128-101500-vgg19-keras-vgg19-f11-s1"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "model.safetensors").write_bytes(b"weights")
    (run_dir / "model" / "config.json").write_text("{}")
    (run_dir / "config.json").write_text("{}")
    return run_dir


# -- names and extras -----------------------------------------------------------------------------


def test_names_are_checked() -> None:
    assert check_log(None) == () and check_log([]) == ()
    assert check_log("tensorboard,mlflow") == ("tensorboard", "mlflow")
    assert check_log(["mlflow", "tensorboard,mlflow"]) == ("mlflow", "tensorboard")
    with pytest.raises(ConfigError) as exc:
        check_log(["tensorboard", "wandb"])
    assert exc.value.field == "log" and "'wandb' is not one of tensorboard, mlflow" in exc.value.message


def test_an_unknown_tracker_is_a_usage_error_naming_the_flag(cli, tmp_path: Path) -> None:
    code, _, err = cli("run", "test_resnet", "--log", "tensorboard,wandb", "--out", tmp_path / "r")
    assert code == 2 and err.strip() == "tlbench: error: --log 'wandb' is not one of tensorboard, mlflow."


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_missing_extra_is_one_line_naming_the_pip_command(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    with pytest.raises(UsageError) as exc:
        make_trackers([name])
    assert exc.value.exit_code == 2 and f"pip install 'tlbench[{name}]'" in exc.value.one_line()
    code, _, err = cli("run", "test_resnet", "--log", name, "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and f"pip install 'tlbench[{name}]'" in err
    assert not (tmp_path / "r").exists()
    # a sweep parses its run options with `run`'s parser: refused before any cell starts
    code, _, err = cli("sweep", "--backbones", "test_resnet", "--out", tmp_path / "s", "--log", name)
    assert code == 2 and f"pip install 'tlbench[{name}]'" in err and not (tmp_path / "s").exists()


# -- TensorBoard ----------------------------------------------------------------------------------


def _events(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def _hparams(acc: Any) -> Any:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(data) for tag, data in content.items()}


def test_tensorboard_scalars_hparams_and_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams import api_pb2

    run_dir = _run_dir(tmp_path)
    (tracker,) = make_trackers(["tensorboard"])
    tracker.start(run_dir, CONFIG, RESOLVED)
    tracker.log_epoch(_row(1, 0.30))
    tracker.log_epoch(_row(2, 0.40))  # logged, but the process dies before epoch 2's checkpoint
    # the resumed run continues after epoch 1: its epoch 2 replaces the one logged before
    (tracker,) = make_trackers(["tensorboard"])
    tracker.start(run_dir, CONFIG, RESOLVED)
    tracker.log_epoch(_row(2, 0.45))
    tracker.log_epoch(_row(3, 0.50))
    tracker.finish(_summary(3), run_dir / "model")

    acc = _events(run_dir / "tensorboard")
    val = [(e.step, round(e.value, 6)) for e in acc.Scalars("val/top1")]
    assert val == [(1, 0.3), (2, 0.45), (3, 0.5)]
    assert [e.step for e in acc.Scalars("train/images_per_sec")] == [2, 3]  # None (unmeasured) left out
    assert {"train/loss", "val/loss", "val/top5", "lr", "epoch_seconds"} <= set(acc.Tags()["scalars"])
    assert [e.value for e in acc.Scalars("summary/final_val_top1")] == [0.5]
    hp = _hparams(acc)
    start = hp["_hparams_/session_start_info"].session_start_info.hparams
    assert start["backbone"].string_value == "vgg19" and start["recipe.lr"].number_value == 1e-4
    assert start["recipe.nesterov"].bool_value is False and start["max_time"].string_value == "none"
    assert start["resolved.params.trainable"].number_value == 400 and "resolved.classes" not in start
    assert hp["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS


# -- MLflow ---------------------------------------------------------------------------------------


@pytest.mark.slow  # ~10 s: MLflow's first use of a store creates its tables (alembic migrations)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy 2.1 on MLflow's queries
def test_mlflow_params_metrics_model_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from tlbench.train.trackers import mlflow_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    run_dir = _run_dir(tmp_path)
    (tracker,) = make_trackers(["mlflow"])
    tracker.start(run_dir, CONFIG, RESOLVED)
    tracker.log_epoch(_row(1, 0.30))
    (tracker,) = make_trackers(["mlflow"])  # resumed after epoch 1: the same MLflow run
    tracker.start(run_dir, CONFIG, RESOLVED)
    tracker.log_epoch(_row(2, 0.40))
    tracker.finish(_summary(2), run_dir / "model")

    uri, _ = mlflow_tracking_uri()
    assert uri == f"sqlite:///{tmp_path / 'results' / 'mlflow' / 'mlflow.db'}"  # the documented default
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tlbench")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.tags["tlbench.run_dir"] == str(run_dir) and run.data.tags["tlbench.status"] == "finished"
    params = run.data.params
    assert params["backbone"] == "vgg19" and float(params["recipe.lr"]) == 1e-4 and params["freeze"] == "11"
    assert params["log"] == "tensorboard,mlflow" and params["resolved.device"] == "cpu"
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.3), (2, 0.4)]
    assert (
        run.data.metrics["summary.final_val_top1"] == 0.5
        and "summary.peak_memory_bytes" not in run.data.metrics
    )
    files = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert files == {"model/model.safetensors", "model/config.json"}
    assert "config.json" in {f.path for f in client.list_artifacts(run.info.run_id)}
    local = Path(client.download_artifacts(run.info.run_id, "model/model.safetensors", str(tmp_path)))
    assert local.read_bytes() == b"weights"


# -- a tracker's faults ---------------------------------------------------------------------------

TINY = ("--data", "synthetic:4x12@32", "--image-size", "32", "--no-pretrained", "--device", "cpu")
TINY += ("--amp", "off", "--batch-size", "8", "--aug", "none", "--freeze", "none")


@pytest.mark.parametrize("store", ["results-is-a-file", "garbage-db", "unknown-scheme"])
def test_an_unusable_mlflow_store_is_one_line_before_training(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    if store == "results-is-a-file":
        Path("results").write_text("not a folder\n")
        where = "results/mlflow/mlflow.db"
    elif store == "garbage-db":
        Path("results/mlflow").mkdir(parents=True)
        Path("results/mlflow/mlflow.db").write_bytes(b"\x00garbage" * 64)
        where = "results/mlflow/mlflow.db"
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://")
        where = "nosuchscheme://"
    code, _, err = cli(
        "run", "test_resnet", *TINY, "--epochs", "1", "--log", "mlflow", "--out", tmp_path / "r"
    )
    assert code == 6 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tlbench: error: --log mlflow cannot use the MLflow store {where} (")
    assert last.endswith("or run without --log mlflow") and err.count("tlbench: error") == 1
    assert not (tmp_path / "r").exists()  # nothing trained, nothing half-written left behind


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_run_finishes(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TensorBoard folder becomes unusable after epoch 1's metrics are written (a file where it
    goes): the tracker is dropped with a warning, metrics.csv and the checkpoint agree at that
    moment, and the run finishes its 2 epochs with all its own files."""
    pytest.importorskip("tensorboard")
    from tlbench.rundir import RunDir
    from tlbench.train import trackers

    run = tmp_path / "r"
    real_write, real_log = RunDir.write_metrics, trackers.TensorBoardTracker.log_epoch
    seen: list[tuple[int, int]] = []

    def write_then_break(self: RunDir, rows: Any) -> None:
        real_write(self, rows)
        if not (self.path / "tensorboard").exists():
            (self.path / "tensorboard").write_text("a file where the event files go\n")

    def log_and_look(self: Any, row: EpochMetrics) -> None:
        rd = RunDir(run)
        seen.append((len(rd.read_metrics()), int(rd.load_checkpoint()["epoch"])))
        real_log(self, row)

    monkeypatch.setattr(RunDir, "write_metrics", write_then_break)
    monkeypatch.setattr(trackers.TensorBoardTracker, "log_epoch", log_and_look)
    with pytest.warns(UserWarning, match=r"--log tensorboard failed \(.*\); it is dropped") as caught:
        code, _, err = cli("run", "test_resnet", *TINY, "--epochs", "2", "--log", "tensorboard", "--out", run)
    assert code == 0 and "Traceback" not in err, err
    assert seen == [(1, 1)]  # called once (then dropped), after the checkpoint of the epoch it logs
    assert sum("--log tensorboard failed" in str(w.message) for w in caught) == 1
    rd = RunDir(run)
    assert rd.finished and [m.epoch for m in rd.read_metrics()] == [1, 2] and rd.read_summary().epochs == 2
    assert (run / "predictions.csv").is_file() and (run / "model").is_dir() and not rd.has_checkpoint
