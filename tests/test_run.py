"""`tlbench run` end to end on synthetic data: it learns, writes the run directory contract, resumes
exactly, and turns every user mistake into one line and a documented exit code."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

DATA = "synthetic:4x40@32"
FAST = ["--data", DATA, "--image-size", "32", "--no-pretrained", "--device", "cpu", "-q"]


def _tiny(out: Path, **overrides: Any) -> Any:
    """A small CPU run of the reference recipe: timm's test_resnet from scratch at 32 px on DATA."""
    from tlbench.train.api import run_config

    options = {"freeze": "none", "data": DATA, "image_size": 32, "pretrained": False, "device": "cpu"}
    return run_config("test_resnet", "keras-vgg19", out=out, **(options | overrides))


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small real run shared by the contract tests: timm's test_resnet from scratch, 4 classes at 32 px
    (about 6 s; reaches ~0.75 validation top-1 in 8 epochs, chance 0.25)."""
    from tlbench.train.loop import train

    cfg = _tiny(
        tmp_path_factory.mktemp("runs") / "r", data="synthetic:4x120@32", epochs=8, lr=0.02, augment="none"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLBENCH_DATA", str(tmp_path_factory.mktemp("data")))
        mp.setenv("TLBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return train(cfg, progress=False)


def test_learns_above_chance(trained: Path) -> None:
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["best_val_top1"] > 0.5  # 4 classes: chance is 0.25


def test_run_directory_contract(trained: Path) -> None:
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
        assert (trained / name).is_file(), name
    assert not (trained / "checkpoint.pt").exists()
    summary = json.loads((trained / "summary.json").read_text())
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
    rows = _metrics(trained)
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
    config = json.loads((trained / "config.json").read_text())
    assert config["schema_version"] == 1 and config["backbone"] == "test_resnet"
    assert config["data_info"]["class_list_hash"] and config["data_info"]["split_rule"]
    assert config["recipe"]["name"] == "keras-vgg19" and config["recipe"]["lr"] == 0.02
    env = json.loads((trained / "env.json").read_text())
    for key in ("python", "torch", "torchvision", "timm", "cuda", "cudnn", "device", "cpu", "tlbench_commit"):
        assert key in env
    per_class = list(csv.DictReader((trained / "per_class.csv").open()))
    assert len(per_class) == 4 and sum(int(r["total"]) for r in per_class) == 4 * 20
    structure = json.loads((trained / "structure.json").read_text())
    assert structure["layers"] and all(
        {"name", "type", "output_shape", "params", "trainable"} <= set(x) for x in structure["layers"]
    )
    assert (trained / "train_validation_acc.png").read_bytes()[:4] == b"\x89PNG"


def test_load_model_round_trip(trained: Path) -> None:
    import numpy as np

    import tlbench
    from tlbench.train.loop import train  # noqa: F401 - the run's own model class

    model = tlbench.load_model(trained / "model")
    model.eval()
    x = torch.from_numpy(np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32))
    again = tlbench.load_model(trained / "model").eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    cfg = json.loads((trained / "model" / "config.json").read_text())
    assert cfg["classes"] and cfg["preprocessing"]["image_size"] == 32


def test_resume_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.train import artifacts
    from tlbench.train.api import resume_config
    from tlbench.train.loop import Interrupted, train

    def cfg(out: Path):
        return _tiny(out, epochs=3, lr=0.01)

    full = train(cfg(tmp_path / "full"), progress=False)

    real = artifacts.Ticker.epoch_done

    def interrupt_after_two(self, row):
        real(self, row)
        if row["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    monkeypatch.setattr(artifacts.Ticker, "epoch_done", interrupt_after_two)
    with pytest.raises(Interrupted, match="resume with: tlbench run --resume"):
        train(cfg(tmp_path / "cut"), progress=False)
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert len(_metrics(tmp_path / "cut")) == 2
    monkeypatch.setattr(artifacts.Ticker, "epoch_done", real)
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
        "0.001s",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "max_time" and summary["epochs"] == 1


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["resnet5", "--freeze", "none"], 5, "resnet50"),
        (["vgg19", "--freeze", "99"], 5, "tlbench layers vgg19"),
        (["vgg19", "--freeze", "lots"], 2, "none"),
        (["test_resnet", "--device", "cuda"], 7, "--device cpu"),
        (["test_resnet", "--amp", "fp8"], 2, "bf16"),
        (["test_resnet", "--recipe", "nope"], 2, "keras-vgg19"),
        (["test_resnet", "--lr", "-1"], 2, "positive"),
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


def test_refuses_to_overwrite_results(cli, trained: Path) -> None:
    code, _, err = cli("run", "test_resnet", *FAST, "--out", trained)
    assert code == 6 and "already holds files" in err
    assert json.loads((trained / "summary.json").read_text())["status"] == "finished"


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
    from tlbench.train.loop import train

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


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.train.loop import CompiledWithFallback

    def broken_compile(model):
        def call(x):
            raise RuntimeError("no C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = torch.nn.Linear(4, 2)
    wrapped = CompiledWithFallback(model)
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="cannot compile.*no C\\+\\+ compiler.*running eagerly"):
        y = wrapped(x)
    assert torch.equal(y, model(x)) and wrapped.state == "eager"


def test_stopped_in_the_first_epoch_can_be_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.train import artifacts
    from tlbench.train.api import resume_config
    from tlbench.train.loop import Interrupted, train

    real = artifacts.Ticker.batch_done

    def interrupt_at_first_batch(self, step, epoch, loss, *rest):
        real(self, step, epoch, loss, *rest)
        os.kill(os.getpid(), signal.SIGTERM)  # what a job scheduler sends

    monkeypatch.setattr(artifacts.Ticker, "batch_done", interrupt_at_first_batch)
    cfg = _tiny(tmp_path / "r", epochs=1, lr=0.01)
    with pytest.raises(Interrupted, match="stopped during epoch 1"):
        train(cfg, progress=False)
    monkeypatch.setattr(artifacts.Ticker, "batch_done", real)
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


def test_resume_refuses_other_options_and_changed_data(cli, tmp_path: Path) -> None:
    code, _, err = cli("run", "--resume", tmp_path / "x", "--epochs", "5")
    assert code == 2 and "--epochs would be ignored" in err
    (tmp_path / "f").write_text("")
    code, _, err = cli("run", "test_resnet", *FAST, "--out", tmp_path / "f")
    assert code == 6 and "is a file" in err


def test_resume_refuses_changed_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.data.dataset import resolve_data
    from tlbench.errors import DataError
    from tlbench.train import artifacts
    from tlbench.train.api import resume_config
    from tlbench.train.loop import Interrupted, train

    def interrupt(self, step, epoch, loss, *rest):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(artifacts.Ticker, "batch_done", interrupt)
    cfg = _tiny(tmp_path / "r", epochs=1)
    with pytest.raises(Interrupted):
        train(cfg, progress=False)
    next((resolve_data(DATA) / "train").rglob("*.JPEG")).unlink()  # the data set changes under the run
    with pytest.raises(DataError, match="data changed since"):
        train(resume_config(tmp_path / "r"), resume=tmp_path / "r", progress=False)
