"""`tlbench run` end to end on synthetic data: it learns, writes the run directory contract, resumes
exactly, and turns every user mistake into one line and a documented exit code."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

DATA = "synthetic:4x40@32"
FAST = ["--data", DATA, "--image-size", "32", "--no-pretrained", "--device", "cpu", "-q"]


def _tiny(out: Path, **overrides: Any) -> Any:
    """A small CPU run of the reference recipe: timm's test_resnet from scratch at 32 px on DATA, in
    fp32 (`--amp auto` is bf16 on AMX CPUs; the contract tests below compare numbers exactly)."""
    from tlbench.config import run_config

    options = {"freeze": "none", "data": DATA, "image_size": 32, "pretrained": False, "device": "cpu"}
    options["amp"] = "off"
    return run_config("test_resnet", "keras-vgg19", out=out, **(options | overrides))


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _config(run_dir: Path) -> dict[str, Any]:
    """config.json as one flat dict: the config as asked (backbone, recipe, seed, data, ...) and what it
    resolved to (data_info, classes, weights_source, params, ...)."""
    doc = json.loads((run_dir / "config.json").read_text())
    return doc["config"] | doc["resolved"]


def _progress_display() -> Any:
    """The trainer's progress display: its epoch_done / batch_done hooks are where the stop tests send a
    signal, at an exact point."""
    from tlbench.train.progress import Ticker

    return Ticker


def test_the_run_records_what_it_cost(trained_run: Path) -> None:
    """Device-seconds, the full schedule's projected time (the reference recipe's 1,000 epochs) and,
    on the CPU, no energy figure; the report turns them into top-1 per device-hour."""
    from tlbench.report import aggregate, collect_runs
    from tlbench.rundir import RunDir

    s = RunDir(trained_run).read_summary()
    assert s.world_size == 1 and s.device_seconds == pytest.approx(s.wall_seconds, rel=1e-3)
    assert s.full_epochs == 1000 and s.energy_joules is None
    mean_epoch = sum(r.epoch_seconds for r in RunDir(trained_run).read_metrics()) / s.epochs
    assert s.projected_full_seconds == pytest.approx(1000 * mean_epoch, rel=0.5)  # + the set-up
    assert s.projected_full_seconds > 1000 * mean_epoch
    records, _ = collect_runs([trained_run])
    row = aggregate(records).iloc[0]
    assert row["device_hours"] == pytest.approx(s.device_seconds / 3600)
    assert row["top1_per_device_hour"] == pytest.approx(s.best_val_top1 / (s.device_seconds / 3600))
    assert row["projected_full_hours"] == pytest.approx(s.projected_full_seconds / 3600)


def test_learns_above_chance(trained_run: Path) -> None:
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["best_val_top1"] > 0.5  # 4 classes: chance is 0.25


def test_run_directory_contract(trained_run: Path) -> None:
    for name in (
        "config.json",
        "env.json",
        "metrics.csv",
        "per_class.csv",
        "train_validation_acc.png",
        "train_validation_loss.png",
        "structure.json",
        "model/model.safetensors",
        "model/config.json",
        "summary.json",
    ):
        assert (trained_run / name).is_file(), name
    assert not (trained_run / "checkpoint.pt").exists()
    summary = json.loads((trained_run / "summary.json").read_text())
    for key in (
        "status",
        "best_val_top1",
        "best_epoch",
        "final_val_top1",
        "final_val_top5",
        "final_val_loss",
        "params_total",
        "params_trainable",
        "params_frozen",
        "wall_seconds",
        "train_images_per_sec",
        "infer_images_per_sec",
        "peak_memory_bytes",
    ):
        assert key in summary, key
    assert summary["params_total"] == summary["params_trainable"] + summary["params_frozen"]
    rows = _metrics(trained_run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert {
        "train_loss",
        "train_top1",
        "val_loss",
        "val_top1",
        "val_top5",
        "lr",
        "epoch_seconds",
        "train_images_per_sec",
    } <= set(rows[0])
    assert max(float(r["val_top1"]) for r in rows) == pytest.approx(summary["best_val_top1"], abs=1e-6)
    raw = json.loads((trained_run / "config.json").read_text())
    assert raw["schema_version"] == 2 and raw["kind"] == "run"
    config = _config(trained_run)
    assert config["backbone"] == "test_resnet" and config["params"]["total"] == summary["params_total"]
    assert config["data_info"]["class_list_hash"] and config["data_info"]["split_rule"]
    assert config["recipe"]["name"] == "keras-vgg19" and config["recipe"]["lr"] == 0.02
    env = json.loads((trained_run / "env.json").read_text())
    for key in ("python", "torch", "torchvision", "timm", "cuda", "cudnn", "device", "cpu", "tlbench_commit"):
        assert key in env
    per_class = list(csv.DictReader((trained_run / "per_class.csv").open()))
    assert len(per_class) == 4 and sum(int(r["total"]) for r in per_class) == 4 * 20
    # predictions.csv: one row per validation image, in split order, agreeing with the summary
    from tlbench.rundir import RunDir

    preds = RunDir(trained_run).read_predictions()
    assert [p.index for p in preds] == list(range(4 * 20))
    assert sum(p.label == p.predicted for p in preds) / len(preds) == pytest.approx(summary["final_val_top1"])
    assert sum(p.label == p.predicted for p in preds) == sum(int(r["correct"]) for r in per_class)
    structure = json.loads((trained_run / "structure.json").read_text())
    assert structure["layers"] and all(
        {"name", "type", "output_shape", "params", "trainable"} <= set(x) for x in structure["layers"]
    )
    assert (trained_run / "train_validation_acc.png").read_bytes()[:4] == b"\x89PNG"


def test_exported_model_scores_the_runs_final_validation(trained_run: Path) -> None:
    """The exported model, evaluated here on the run's validation split with the preprocessing its
    config.json names, gives the run's own final numbers: a bad save (weights, BatchNorm statistics,
    class order, preprocessing) cannot pass."""
    import torch.nn.functional as F

    import tlbench
    from tlbench.data.dataset import load_data

    model = tlbench.load_model(trained_run / "model")
    assert not model.training
    exported = json.loads((trained_run / "model" / "config.json").read_text())
    run_config = _config(trained_run)
    pre = exported["preprocessing"]
    assert pre["image_size"] == 32 and pre["rescale"] == pytest.approx(1 / 255)

    # The run's data, read as the trainer reads it: the folder it resolved, its size and resize.
    data = load_data(
        run_config["data_info"]["root"],
        pre["image_size"],
        pre["interpolation"],
        data_format=run_config["data_format"],
        split_seed=run_config["split_seed"],
        progress=False,
    )
    assert data.classes == exported["classes"] == run_config["classes"]
    x = torch.from_numpy(data.val.images).permute(0, 3, 1, 2).float() / 255  # uint8 NHWC -> NCHW
    if pre["mean"] is not None:
        x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    y = torch.from_numpy(data.val.labels).long()
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]).any(1)

    summary = json.loads((trained_run / "summary.json").read_text())
    assert len(y) == 4 * 20
    assert summary["final_val_top1"] == int(correct.sum()) / len(y)
    assert summary["final_val_top5"] == int(top5.sum()) / len(y)
    assert summary["final_val_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), abs=1e-5)
    assert float(_metrics(trained_run)[-1]["val_top1"]) == pytest.approx(summary["final_val_top1"], abs=1e-6)
    per_class = list(csv.DictReader((trained_run / "per_class.csv").open()))
    assert [r["wnid"] for r in per_class] == data.classes
    assert [int(r["total"]) for r in per_class] == torch.bincount(y, minlength=4).tolist()
    assert [int(r["correct"]) for r in per_class] == torch.bincount(y[correct], minlength=4).tolist()


def test_resume_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.errors import Interrupted
    from tlbench.train.api import resume_config
    from tlbench.train.trainer import train

    def cfg(out: Path):
        return _tiny(out, epochs=3, lr=0.01)

    full = train(cfg(tmp_path / "full"), progress=False)

    display = _progress_display()
    real = display.epoch_done
    epochs_done = []

    def interrupt_after_two(self, row):
        real(self, row)
        epochs_done.append(row)
        if len(epochs_done) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    monkeypatch.setattr(display, "epoch_done", interrupt_after_two)
    with pytest.raises(Interrupted, match="resume with: tlbench run --resume"):
        train(cfg(tmp_path / "cut"), progress=False)
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert len(_metrics(tmp_path / "cut")) == 2
    monkeypatch.setattr(display, "epoch_done", real)
    resumed = train(resume_config(tmp_path / "cut"), resume=tmp_path / "cut", progress=False)
    keys = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr")
    a, b = _metrics(full), _metrics(resumed)
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, resumed))
    assert sa["final_val_loss"] == sb["final_val_loss"] and sa["final_val_top1"] == sb["final_val_top1"]


def test_max_time_stops_cleanly(cli, tmp_path: Path) -> None:
    code, _, err = cli(
        "run",
        "test_resnet",
        "--freeze",
        "none",
        *FAST,
        "--epochs",
        "50",
        "--max-time",
        "0",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    # The limit is checked before every batch: 0 s trains nothing, and the run still ends complete,
    # with the untrained model evaluated and exported.
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "max_time" and summary["epochs"] == 0 and summary["best_epoch"] is None
    assert summary["final_val_top1"] is not None and summary["val_images"] > 0
    assert (tmp_path / "r" / "model" / "model.safetensors").is_file()
    assert "stopped during epoch 1; keeping the model after epoch 0" in err


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["resnet5", "--freeze", "none"], 5, "resnet50"),
        (["vgg19", "--freeze", "99"], 5, "tlbench layers vgg19"),
        (["vgg19", "--freeze", "lots"], 2, "none"),
        (["test_resnet", "--device", "cuda"], 7, "--device cpu"),
        (["test_resnet", "--amp", "fp8"], 2, "bf16"),
        (["test_resnet", "--recipe", "nope"], 2, "keras-vgg19"),
        (["test_resnet", "--lr", "-1"], 2, "--lr -1 must be in (0, 10]"),
    ],
)
def test_cli_errors(cli, tmp_path: Path, args: list[str], code: int, text: str) -> None:
    if "--device" not in args:
        args = [*args, "--device", "cpu"]
    got, _, err = cli("run", *args, "--data", DATA, "--no-pretrained", "-q", "--out", tmp_path / "r")
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("CUDA is available here")
    assert got == code, err
    assert err.startswith("tlbench: error:") and err.count("\n") == 1 and text in err


def test_weights_unavailable_offline(cli, tmp_path: Path) -> None:
    code, _, err = cli(
        "run",
        "test_resnet",
        "--freeze",
        "none",
        "--data",
        DATA,
        "--device",
        "cpu",
        "-q",
        "--out",
        tmp_path / "r",
    )
    assert code == 3 and "--weights" in err and "--no-pretrained" in err
    assert not (tmp_path / "r" / "summary.json").exists()


def test_refuses_to_overwrite_results(cli, trained_run: Path) -> None:
    code, _, err = cli("run", "test_resnet", *FAST, "--out", trained_run)
    assert code == 6 and "already holds files" in err
    assert json.loads((trained_run / "summary.json").read_text())["status"] == "finished"


def test_out_that_is_a_file_is_refused(cli, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("keep me")
    code, _, err = cli("run", "test_resnet", *FAST, "--out", tmp_path / "f")
    assert code == 6 and "is a file" in err and err.count("\n") == 1
    assert (tmp_path / "f").read_text() == "keep me"


def test_unwritable_out(cli, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    code, _, err = cli("run", "test_resnet", *FAST, "--out", tmp_path / "file" / "run")
    assert code == 6 and "not writable" in err


def test_recipes_and_layers_commands(cli) -> None:
    code, out, _ = cli("recipes", "--json")
    recipes = json.loads(out)
    assert code == 0 and recipes["keras-vgg19"]["lr"] == 1e-4 and recipes["keras-vgg19"]["batch_size"] == 32
    assert (
        recipes["keras-vgg19"]["interpolation"] == "nearest"
        and recipes["keras-vgg19"]["normalize"] == "rescale"
    )
    assert "timm-ft" in recipes
    code, out, _ = cli("layers", "vgg19", "--freeze", "11", "--json")
    report = json.loads(out)
    assert report["params_frozen"] == 2_325_568 and report["params_total"] == 20_024_384
    assert report["layers"][11]["name"] == "block3_pool" and not report["layers"][11]["frozen"]
    code, out, _ = cli("backbones", "vgg1*")
    assert code == 0 and "vgg19" in out and "vgg19_bn" in out


@pytest.mark.parametrize("aug", ["none", "keras"])
def test_probe_feature_cache(tmp_path: Path, aug: str) -> None:
    from tlbench.train.trainer import train

    def probe(cache: bool) -> Path:
        cfg = _tiny(
            tmp_path / f"{aug}-{cache}", freeze="all", epochs=2, lr=0.05, augment=aug, feature_cache=cache
        )
        return train(cfg, progress=False)

    cached, plain = probe(True), probe(False)
    used = json.loads((cached / "summary.json").read_text())["feature_cache"]["used"]
    assert used is (aug == "none")  # augmentation changes the features every epoch: no cache then
    if aug == "none":  # same batches, same features: the same numbers, only faster
        a, b = _metrics(cached), _metrics(plain)
        for key in ("train_loss", "val_loss", "val_top1"):
            assert [float(r[key]) for r in a] == pytest.approx([float(r[key]) for r in b], rel=1e-4, abs=1e-5)


def test_stopped_in_the_first_epoch_can_be_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.errors import Interrupted
    from tlbench.train.api import resume_config
    from tlbench.train.trainer import train

    display = _progress_display()
    real = display.batch_done

    def interrupt_at_first_batch(self, step, epoch, loss, *rest):
        real(self, step, epoch, loss, *rest)
        os.kill(os.getpid(), signal.SIGTERM)  # what a job scheduler sends

    monkeypatch.setattr(display, "batch_done", interrupt_at_first_batch)
    cfg = _tiny(tmp_path / "r", epochs=1, lr=0.01)
    with pytest.raises(Interrupted, match="stopped during epoch 1"):
        train(cfg, progress=False)
    monkeypatch.setattr(display, "batch_done", real)
    done = train(resume_config(tmp_path / "r"), resume=tmp_path / "r", progress=False)
    assert json.loads((done / "summary.json").read_text())["epochs"] == 1


def test_a_last_batch_of_one_is_dropped_not_fatal(cli, tmp_path: Path) -> None:
    # synthetic:4x40 keeps 33 train images per class: 132, so batch 131 would leave one image
    code, _, err = cli(
        "run",
        "test_resnet",
        "--freeze",
        "none",
        *FAST,
        "--epochs",
        "1",
        "--batch-size",
        "131",
        "--aug",
        "none",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 1
    config = _config(tmp_path / "r")
    assert config["data_info"]["counts"]["train"] == 132 and config["recipe"]["batch_size"] == 131
    rows = _metrics(tmp_path / "r")
    assert [int(r["epoch"]) for r in rows] == [1]
    # images/s is the images trained_run over the train seconds: the epoch trained_run on 131 images, not 132
    images = float(rows[0]["train_images_per_sec"]) * float(rows[0]["train_seconds"])
    assert images == pytest.approx(131, abs=0.05)
    # validation is not cut: every one of the 4 x 7 validation images is scored
    per_class = list(csv.DictReader((tmp_path / "r" / "per_class.csv").open()))
    assert sum(int(r["total"]) for r in per_class) == 28
    assert (tmp_path / "r" / "model" / "model.safetensors").is_file()


def test_resume_refuses_other_options_and_changed_data(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, run = tmp_path / "data", tmp_path / "r"
    code, _, err = cli("data", "synth", data, "--classes", "3", "--per-class", "12", "--size", "32")
    assert code == 0, err
    train_dir = data / "train"
    wnids = sorted(p.name for p in train_dir.iterdir())
    assert len(wnids) == 3 and len(list((train_dir / wnids[0]).iterdir())) == 10  # 10 train, 2 val

    display = _progress_display()
    real = display.epoch_done

    def ctrl_c_after_the_first_epoch(self, row):
        real(self, row)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(display, "epoch_done", ctrl_c_after_the_first_epoch)
    run_args = ["--data", data, "--image-size", "32", "--no-pretrained", "--device", "cpu", "-q"]
    code, _, err = cli("run", "test_resnet", "--freeze", "none", "--epochs", "2", *run_args, "--out", run)
    assert code == 130 and f"tlbench run --resume {run}" in err
    monkeypatch.setattr(display, "epoch_done", real)
    assert len(_metrics(run)) == 1 and not (run / "summary.json").exists()

    def resume_error(*extra: object) -> tuple[int, str]:
        code, _, err = cli("run", "--resume", run, "-q", *extra)
        errors = [line for line in err.splitlines() if not line.startswith("tlbench: warning:")]
        assert len(errors) == 1 and errors[0].startswith("tlbench: error:"), err  # one line, no traceback
        return code, errors[0]

    # Options a resumed run would silently ignore.
    code, line = resume_error("--epochs", "5")
    assert code == 2 and "--epochs would be ignored" in line
    code, line = resume_error("--lr", "0.1", "--data", data)
    assert code == 2 and "--lr" in line and "--data" in line

    # More training images than when the run started.
    extra = train_dir / wnids[0] / "extra.JPEG"
    shutil.copy(next((train_dir / wnids[1]).iterdir()), extra)
    code, line = resume_error()
    assert code == 4 and "data changed since" in line and "counts" in line
    assert "'train': 30" in line and "'train': 31" in line  # from what to what
    extra.unlink()

    # A class gone (from both splits).
    aside = tmp_path / "aside"
    aside.mkdir()
    for split in ("train", "val"):
        shutil.move(data / split / wnids[2], aside / split)
    code, line = resume_error()
    assert code == 4 and "data changed since" in line and "class_list_hash" in line
    for split in ("train", "val"):
        shutil.move(aside / split, data / split / wnids[2])
    assert len(_metrics(run)) == 1 and not (run / "summary.json").exists()  # refusals touch nothing

    # The same data again: the run continues and finishes.
    code, _, err = cli("run", "--resume", run, "-q")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_resume_refuses_changed_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.data.dataset import resolve_data
    from tlbench.errors import DataError, Interrupted
    from tlbench.train.api import resume_config
    from tlbench.train.trainer import train

    def interrupt(self, step, epoch, loss, *rest):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(_progress_display(), "batch_done", interrupt)
    cfg = _tiny(tmp_path / "r", epochs=1)
    with pytest.raises(Interrupted):
        train(cfg, progress=False)
    # Same classes and counts, but two images swap contents: only the source fingerprint changes.
    first, second = sorted((resolve_data(DATA) / "train").rglob("*.JPEG"))[:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    with pytest.raises(DataError, match=r"data changed since.*files were replaced or edited"):
        train(resume_config(tmp_path / "r"), resume=tmp_path / "r", progress=False)
    next((resolve_data(DATA) / "train").rglob("*.JPEG")).unlink()  # one image fewer: the counts change
    with pytest.raises(DataError, match=r"data changed since.*counts"):
        train(resume_config(tmp_path / "r"), resume=tmp_path / "r", progress=False)
