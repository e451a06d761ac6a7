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


def test_auto_layout_is_nhwc_for_convnets_on_cuda_and_pytorchs_own_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decided without touching a GPU: `choose` only reads the device type."""
    from tlbench import speed

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # conftest's: here the automatic count

    model = _model("test_resnet")
    cpu = speed.choose(model, "cpu")
    assert not cpu.channels_last and not cpu.compile  # NCHW: no layout rule holds across CPUs
    assert cpu.threads == speed.available_cores()
    assert "NCHW" in cpu.why["channels_last"] and "CPU" in cpu.why["compile"]
    gpu = speed.choose(model, "cuda")
    assert gpu.channels_last and "convolutional network" in gpu.why["channels_last"]
    vit = speed.choose(_model("test_vit", freeze="none", size=160), "cuda")
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
    from tlbench.config import RunConfig, run_config
    from tlbench.errors import ConfigError

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
    ("backbone", "freeze", "channels_last"),
    [("vgg11", "6", "on"), ("test_resnet", "50%", "on"), ("test_resnet", "none", "auto")],
)
def test_chosen_step_gives_the_plain_steps_losses(backbone: str, freeze: str, channels_last: str) -> None:
    """tlbench's fp32 step in the chosen layout (NHWC where forced, as `bench --channels-last on`)
    and a plain NCHW eager loop on the same weights and batches give the same losses, step after
    step (to float rounding)."""
    from tlbench import speed
    from tlbench.bench.reference import PlainState, plain_optimizer, plain_train_step
    from tlbench.config import get_recipe
    from tlbench.train.step import TrainStep

    recipe = get_recipe("keras-vgg19").replace(lr=1e-2)
    plain_model = _model(backbone, freeze)
    model = copy.deepcopy(plain_model)
    chosen = speed.choose(model, "cpu", channels_last=channels_last)  # type: ignore[arg-type]
    assert chosen.channels_last == (channels_last == "on")
    fmt = speed.memory_format(chosen)
    model.to(memory_format=fmt)
    step = TrainStep(model, recipe, torch.device("cpu"), None, steps_per_epoch=10, compile=chosen.compile)
    plain = PlainState(plain_model, plain_optimizer(plain_model, recipe), None, torch.device("cpu"), None,
                       plain_model.head.fc1.weight, plain_model.l2, recipe.label_smoothing)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 5, (8,), generator=g)
        with torch.no_grad():
            expected = torch.nn.functional.cross_entropy(plain_model(x), y) + plain_model.l2_penalty()
        plain_train_step(plain, x, y)
        loss = step(x.contiguous(memory_format=fmt), y)
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


def _cpu_bf16(monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool) -> None:
    """Make PyTorch report (or deny) AMX and AVX512-BF16 on this CPU."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected", "reason"),
    [
        (True, True, torch.bfloat16, "AMX"),
        (False, True, torch.bfloat16, "AVX512-BF16"),
        (False, False, None, "neither AMX nor AVX512-BF16"),
    ],
)
def test_amp_auto_on_the_cpu_follows_what_pytorch_says_the_cpu_has(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, expected: torch.dtype | None, reason: str
) -> None:
    from tlbench import runtime

    _cpu_bf16(monkeypatch, amx, avx512_bf16)
    dtype, why = runtime.choose_amp("auto", torch.device("cpu"))
    assert dtype == expected and reason in why and why.startswith("auto: ")
    assert runtime.choose_amp("off", torch.device("cpu")) == (None, "off: asked for")  # asked for wins
    assert runtime.choose_amp("bf16", torch.device("cpu"))[0] == torch.bfloat16
    assert runtime.choose_amp("auto", torch.device("cuda"))[0] == torch.bfloat16  # no GPU touched


def test_a_bf16_cpu_step_trains() -> None:
    """Under CPU bf16 autocast the default step still learns: the loss on a fixed batch falls."""
    from tlbench.config import get_recipe
    from tlbench.train.step import TrainStep

    model = _model("test_resnet", freeze="none")
    recipe = get_recipe("timm-ft").replace(lr=3e-3, warmup_epochs=0.0, label_smoothing=0.0)
    step = TrainStep(model, recipe, torch.device("cpu"), torch.bfloat16, steps_per_epoch=100)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 5, (16,), generator=g)
    losses = [float(step(x, y)) for _ in range(12)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize(("amx", "amp", "precision"), [(True, "bf16", "bf16"), (False, "off", "fp32")])
def test_a_cpu_run_records_the_precision_auto_chose_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amx: bool, amp: str, precision: str
) -> None:
    from typer.testing import CliRunner

    from tlbench.cli import app

    _cpu_bf16(monkeypatch, amx, False)
    out = tmp_path / "run"
    args = ["run", "test_resnet", "--freeze", "50%", "--data", "synthetic:4x12@32", "--image-size", "32"]
    args += ["--epochs", "1", "--no-pretrained", "--device", "cpu", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["amp"] == "auto" and saved["resolved"]["amp"] == amp
    why = saved["resolved"]["speed"]["why"]["amp"]
    assert why.startswith("auto: ") and ("AMX" if amx else "neither AMX") in why
    summary = json.loads((out / "summary.json").read_text())
    assert summary["amp"] == amp
    printed = " ".join(result.output.replace("│", " ").split())  # the summary table, unwrapped
    assert f"amp {amp}" in printed and f"{precision} ({why})" in printed


def test_bf16_stays_off_where_onednn_gets_a_strided_1x1_convolution_wrong(
    recwarn: pytest.WarningsRecorder,
) -> None:
    """test_resnet at 16 px feeds a 1x1 map to layer4's stride-2 convolution, whose oneDNN bf16 weight
    gradient is garbage on AMX CPUs (benchmarks/onednn_bf16_1x1.py): `auto` keeps fp32 and says why;
    an explicit bf16 warns. At 32 px that convolution sees 2x2 and bf16 stays."""
    from tlbench import runtime

    cpu = torch.device("cpu")
    tiny = _model("test_resnet", freeze="none", size=16)
    assert runtime.bf16_cpu_hazard(tiny, 16) == "backbone.layer4.0.conv1"
    dtype, why = runtime.guard_bf16(torch.bfloat16, "auto: AMX", "auto", cpu, tiny, 16)
    assert dtype is None and "backbone.layer4.0.conv1" in why and why.startswith("auto: fp32")
    dtype, why = runtime.guard_bf16(torch.bfloat16, "bf16: asked for", "bf16", cpu, tiny, 16)
    assert dtype == torch.bfloat16 and any("layer4.0.conv1" in str(w.message) for w in recwarn.list)
    assert runtime.bf16_cpu_hazard(_model("test_resnet", freeze="none", size=32), 32) is None
    frozen = _model("test_resnet", freeze="all", size=16)  # nothing trained: no weight gradient
    assert runtime.bf16_cpu_hazard(frozen, 16) is None
    assert runtime.guard_bf16(None, "auto: fp32", "auto", cpu, tiny, 16) == (None, "auto: fp32")


def test_configs_written_with_the_retired_conv_grad_still_resume_and_describe() -> None:
    """Runs made while tlbench had `--conv-grad` carry it in config.json (and its verdicts in
    resolved.speed): they load, resume with PyTorch's own kernels, and print as before."""
    from tlbench import speed
    from tlbench.config import RunConfig, run_config

    cfg = run_config("test_resnet", freeze="none")
    old = cfg.to_dict() | {"conv_grad": "auto"}
    assert RunConfig.from_dict(old) == cfg
    shapes = {"512x2x2->512 k3x3 s1x1 p1x1": "gemm (onednn 81.3 ms, gemm 9.0 ms)"}
    record = {"channels_last": True, "compile": False, "threads": 2, "why": {}}
    record |= {"conv_grad": "auto", "conv_grad_shapes": shapes}
    assert speed.describe(record) == "nhwc, eager, 2 threads"
