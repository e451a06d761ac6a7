"""The speed defaults (`tlbench.speed`): what `--channels-last auto`, `--compile auto` and the thread
count choose, that the choice is recorded, and that it never changes the numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch


def _model(backbone: str, freeze: str = "50%", size: int = 32) -> torch.nn.Module:
    from tlbench.models import build_model

    torch.manual_seed(0)
    return build_model(backbone, 5, pretrained=False, image_size=size, dropout=0.0, freeze=freeze)


def test_auto_picks_nhwc_for_convnets_and_eager_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench import speed

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # conftest's: here the automatic count

    conv = speed.choose(_model("test_resnet"), "cpu")
    assert conv.channels_last and not conv.compile
    assert conv.threads == speed.available_cores()
    assert "convolutional network" in conv.why["channels_last"] and "CPU" in conv.why["compile"]
    vit = speed.choose(_model("test_vit", freeze="none", size=160), "cpu")
    assert not vit.channels_last  # a patch embedding alone: nothing for NHWC to speed up


def test_compile_auto_on_a_gpu_depends_on_the_run_length() -> None:
    """Decided without touching a GPU: `choose` only reads the device type."""
    from tlbench import speed

    model = _model("test_resnet")
    assert speed.choose(model, "cuda", train_steps=None).compile  # a benchmark: a long run
    assert speed.choose(model, "cuda", train_steps=speed.COMPILE_MIN_STEPS).compile
    short = speed.choose(model, "cuda", train_steps=50)
    assert not short.compile and "50 steps" in short.why["compile"]
    assert speed.choose(model, "cuda").threads is None  # the GPU's host threads are left alone


def test_explicit_choices_and_the_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench import speed

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # conftest's: first the automatic count
    model = _model("test_resnet")
    forced = speed.choose(model, "cpu", channels_last="off", compile="on", threads=1)
    assert (forced.channels_last, forced.compile, forced.threads) == (False, True, 1)
    assert speed.choose(model, "cpu", local_world=2).threads == max(1, speed.available_cores() // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert speed.choose(model, "cpu").threads == torch.get_num_threads()


def test_booleans_mean_on_and_off() -> None:
    """Configs written before `auto` existed (`"channels_last": false`) still load."""
    from tlbench.bench import BenchOptions
    from tlbench.errors import ConfigError
    from tlbench.train.config import RunConfig, run_config

    cfg = run_config("test_resnet", channels_last=True, compile=False)
    assert (cfg.channels_last, cfg.compile) == ("on", "off")
    old = cfg.to_dict() | {"channels_last": False}
    assert RunConfig.from_dict(old).channels_last == "off"
    assert BenchOptions(channels_last=True).channels_last == "on"
    with pytest.raises(ConfigError, match="channels_last"):
        run_config("test_resnet", channels_last="sometimes")
    with pytest.raises(ConfigError, match="threads"):
        run_config("test_resnet", threads=0)


@pytest.mark.parametrize(
    ("backbone", "freeze", "conv_grad"),
    [
        ("vgg11", "6", "auto"),
        ("vgg11", "6", "on"),
        ("test_resnet", "50%", "auto"),
        ("test_resnet", "none", "on"),
    ],
)
def test_chosen_step_gives_the_plain_steps_losses(backbone: str, freeze: str, conv_grad: str) -> None:
    """tlbench's default step (NHWC on the CPU, as chosen; with `on`, every trained convolution's
    weight gradient by the GEMM) and a plain NCHW eager loop on the same weights and batches give
    the same losses, step after step (to float rounding)."""
    from tlbench import speed
    from tlbench.bench.reference import PlainState, plain_optimizer, plain_train_step
    from tlbench.train import convgrad
    from tlbench.train.recipes import get_recipe
    from tlbench.train.step import TrainStep

    recipe = get_recipe("keras-vgg19").replace(lr=1e-2)
    plain_model = _model(backbone, freeze)
    model = copy.deepcopy(plain_model)
    chosen = speed.choose(model, "cpu", conv_grad=conv_grad)  # type: ignore[arg-type]
    assert chosen.channels_last
    fmt = speed.memory_format(chosen)
    model.to(memory_format=fmt)
    mode, chosen = convgrad.for_speed(chosen, model, (8, 3, 32, 32), fmt)
    if conv_grad == "on" or backbone == "vgg11":  # test_resnet 50 % trains its head alone
        assert mode is not None and mode.verdicts
    step = TrainStep(model, recipe, torch.device("cpu"), None, steps_per_epoch=10, compile=chosen.compile,
                     conv_grad=mode)  # fmt: skip
    plain = PlainState(plain_model, plain_optimizer(plain_model, recipe), None, torch.device("cpu"), None,
                       plain_model.head.fc1.weight, plain_model.l2, recipe.label_smoothing)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 5, (8,), generator=g)
        with torch.no_grad():
            expected = torch.nn.functional.cross_entropy(plain_model(x), y) + plain_model.l2_penalty()
        plain_train_step(plain, x, y)
        loss = step(x.contiguous(memory_format=speed.memory_format(chosen)), y)
        assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    for a, b in zip(model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_a_run_records_and_prints_what_it_chose(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tlbench.cli import app

    out = tmp_path / "run"
    args = ["run", "test_resnet", "--freeze", "50%", "--data", "synthetic:4x12@32"]
    args += ["--image-size", "32", "--epochs", "1", "--no-pretrained", "--channels-last", "off"]
    args += ["--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    chosen = json.loads((out / "config.json").read_text())["resolved"]["speed"]
    assert chosen["channels_last"] is False and chosen["why"]["channels_last"] == "off: asked for"
    assert chosen["compile"] is False and chosen["threads"] >= 1
    assert "nchw, eager" in result.output


def test_a_run_records_its_convolution_weight_gradients(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tlbench.cli import app

    common = ["run", "test_resnet", "--freeze", "none", "--data", "synthetic:4x12@32", "--image-size", "32"]
    common += ["--epochs", "1", "--no-pretrained", "--quiet"]
    result = CliRunner().invoke(app, [*common, "--conv-grad", "on", "--out", str(tmp_path / "on")])
    assert result.exit_code == 0, result.output
    chosen = json.loads((tmp_path / "on" / "config.json").read_text())["resolved"]["speed"]
    shapes = chosen["conv_grad_shapes"]
    assert chosen["conv_grad"] == "on" and len(shapes) > 3  # test_resnet's distinct trained shapes
    assert set(shapes.values()) == {"gemm (asked for)"}
    printed = " ".join(result.output.replace("│", " ").split())  # the summary table, unwrapped
    assert f"conv grad on (gemm {len(shapes)})" in printed
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    chosen = json.loads((tmp_path / "auto" / "config.json").read_text())["resolved"]["speed"]
    assert chosen["conv_grad"] == "auto" and chosen["conv_grad_shapes"].keys() == shapes.keys()
    assert all(" ms, gemm " in verdict for verdict in chosen["conv_grad_shapes"].values())
    result = CliRunner().invoke(app, [*common, "--conv-grad", "off", "--out", str(tmp_path / "off")])
    chosen = json.loads((tmp_path / "off" / "config.json").read_text())["resolved"]["speed"]
    assert (chosen["conv_grad"], chosen["conv_grad_shapes"]) == ("off", {})
    assert "conv grad" not in result.output
