"""The weight-gradient algorithms of trained convolutions (`tlbench.train.convgrad`): the same
gradients as PyTorch's own, taken only where they apply, chosen by a probe whose verdicts are cached
and recorded."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tlbench.train import convgrad
from tlbench.train.convgrad import ConvGrad

CASES = list(itertools.product([1, 3], [1, 2], [0, 1], [True, False], ["nhwc", "nchw"]))


def _fmt(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "nhwc" else torch.contiguous_format


def _grads(conv: nn.Conv2d, x: torch.Tensor, mode: ConvGrad | None) -> list[torch.Tensor | None]:
    conv.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(x.requires_grad)
    if mode is None:
        out = conv(x)
    else:
        with mode:
            out = conv(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    bias = conv.bias.grad if conv.bias is not None else None
    return [conv.weight.grad, bias, x.grad]


GEOMETRIES = [  # (kernel, stride, padding), square and not; 9x7 inputs that strides do not divide
    *sorted({((k, k), (s, s), (p, p)) for k, s, p, _, _ in CASES}),
    ((1, 3), (2, 1), (0, 1)),
    ((3, 1), (1, 3), (1, 0)),
    ((5, 2), (2, 3), (2, 1)),
]


@pytest.mark.parametrize("algorithm", ["gemm", "swapped-conv"])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize(("kernel", "stride", "padding"), GEOMETRIES)
def test_each_algorithm_gives_pytorchs_weight_gradient(
    algorithm: str, layout: str, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    fmt = _fmt(layout)
    x = torch.randn(3, 6, 9, 7).contiguous(memory_format=fmt)
    weight = torch.randn(5, 6, *kernel).contiguous(memory_format=fmt)
    out = torch.nn.functional.conv2d(x, weight, None, stride, padding)
    grad_out = torch.randn(out.shape).contiguous(memory_format=fmt)
    args = (x, grad_out, weight, stride, padding)
    expected = convgrad.onednn_weight_grad(*args)
    torch.testing.assert_close(convgrad.ALGORITHMS[algorithm](*args), expected, rtol=1e-5, atol=1e-5)


def test_an_empty_batch_and_a_one_element_stride(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = nn.Conv2d(4, 3, 3)
    with ConvGrad("on"):
        out = torch.nn.functional.conv2d(torch.randn(2, 4, 7, 7), conv.weight, None, [2], [1])  # as F allows
    assert out.shape == (2, 3, 4, 4)
    monkeypatch.setattr(convgrad, "_store", lambda *_: None)  # each round probes afresh
    for name in convgrad.ALGORITHMS:  # a probe that picks `name`
        times = {n: 0.1 if n == name else 1.0 for n in convgrad.ALGORITHMS}
        monkeypatch.setattr(convgrad, "probe", lambda conv, fmt, times=times: times)
        conv.zero_grad(set_to_none=True)
        with ConvGrad("auto") as mode:
            conv(torch.randn(0, 4, 5, 5)).sum().backward()
        [verdict] = mode.verdicts.values()
        assert verdict.startswith(name)
        assert torch.equal(conv.weight.grad, torch.zeros_like(conv.weight))


@pytest.mark.parametrize(("k", "stride", "padding", "bias", "layout"), CASES)
def test_gemm_gradients_equal_pytorchs(k: int, stride: int, padding: int, bias: bool, layout: str) -> None:
    torch.manual_seed(0)
    fmt = _fmt(layout)
    conv = nn.Conv2d(6, 5, k, stride=stride, padding=padding, bias=bias).to(memory_format=fmt)
    x = torch.randn(3, 6, 9, 7).contiguous(memory_format=fmt).requires_grad_()
    expected = _grads(conv, x, None)
    mode = ConvGrad("on", fmt)
    got = _grads(conv, x, mode)
    assert list(mode.verdicts.values()) == ["gemm (asked for)"]
    for a, b in zip(got, expected, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert conv.weight.grad.is_contiguous(memory_format=fmt)


def test_a_frozen_input_gets_no_gradient_and_the_first_layer_still_trains() -> None:
    """The first trained convolution after a frozen prefix: its input needs no gradient."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)  # requires_grad False
    expected = _grads(conv, x, None)
    got = _grads(conv, x, ConvGrad("on"))
    assert got[2] is None
    torch.testing.assert_close(got[0], expected[0])


@pytest.mark.parametrize(
    ("conv", "context"),
    [
        (nn.Conv2d(4, 4, 3, padding=1, groups=2), "grad"),
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2), "grad"),
        (nn.Conv2d(4, 4, 3, padding="same"), "grad"),
        (nn.Conv2d(4, 4, 3, padding=1), "no_grad"),
        (nn.Conv2d(4, 4, 3, padding=1).requires_grad_(False), "grad"),
    ],
    ids=["groups", "dilation", "padding-same", "no-grad", "frozen"],
)
def test_convolutions_it_does_not_apply_to_are_left_alone(conv: nn.Conv2d, context: str) -> None:
    mode = ConvGrad("on")
    x = torch.randn(2, 4, 6, 6)
    with torch.set_grad_enabled(context == "grad"), mode:
        out = conv(x)
    assert mode.verdicts == {}
    torch.testing.assert_close(out, conv(x))


def test_auto_probes_each_shape_once_keeps_the_faster_and_caches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    timings = {  # the swapped convolution faster; a tie with oneDNN's
        "16x8x8->16": {"onednn": 2.0e-3, "gemm": 1.5e-3, "swapped-conv": 1.0e-3},
        "16x8x8->8": {"onednn": 1.0e-3, "gemm": 0.95e-3, "swapped-conv": 3.0e-3},
    }
    probed: list[str] = []

    def fake_probe(conv: convgrad._Conv, fmt: torch.memory_format) -> dict[str, float]:
        probed.append(conv.key)
        return timings[conv.key.split(" ")[0]]

    monkeypatch.setattr(convgrad, "probe", fake_probe)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1),
                          nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1))  # fmt: skip
    model[0].requires_grad_(False)
    model.to(memory_format=torch.channels_last)
    mode = ConvGrad("auto")
    mode.discover(model, (2, 3, 8, 8), torch.channels_last)
    assert probed == ["16x8x8->16 k3x3 s1x1 p1x1", "16x8x8->8 k3x3 s1x1 p1x1"]  # one per shape, trained only
    assert mode.verdicts == {
        "16x8x8->16 k3x3 s1x1 p1x1": "swapped-conv (onednn 2.0 ms, gemm 1.5 ms, swapped-conv 1.0 ms)",
        "16x8x8->8 k3x3 s1x1 p1x1": "onednn (onednn 1.0 ms, gemm 0.9 ms, swapped-conv 3.0 ms)",  # margin
    }
    cached = json.loads(convgrad.cache_file().read_text())
    assert list(cached.values()) == [mode.verdicts]
    assert "threads" in next(iter(cached)) and "nhwc" in next(iter(cached))

    def no_probe(*_: object) -> None:
        raise AssertionError("probed again")

    monkeypatch.setattr(convgrad, "probe", no_probe)
    calls: list[tuple[int, ...]] = []
    swapped = convgrad.ALGORITHMS["swapped-conv"]

    def spy(x: torch.Tensor, *rest: object) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return swapped(x, *rest)  # type: ignore[arg-type]

    monkeypatch.setitem(convgrad.ALGORITHMS, "swapped-conv", spy)
    again = ConvGrad("auto")
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with again:  # a later process: the verdicts come from the cache, also at the first step
        model(x).sum().backward()
    assert again.verdicts == mode.verdicts
    assert calls == [(2, 16, 8, 8), (2, 16, 8, 8)]  # the two 16->16 convolutions, not the 16->8 one
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()  # oneDNN's everywhere
    for got, expected in zip(grads, (p.grad for p in model.parameters() if p.requires_grad), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    other = ConvGrad("auto", torch.contiguous_format)  # another layout is another verdict
    with pytest.raises(AssertionError, match="probed again"):
        other.discover(model, (2, 3, 8, 8), torch.contiguous_format)


def test_a_real_probe_times_both_and_an_unwritable_cache_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # <file>/tlbench cannot be made
    model = nn.Conv2d(8, 8, 3, padding=1).to(memory_format=torch.channels_last)
    mode = ConvGrad("auto")
    mode.discover(model, (4, 8, 4, 4), torch.channels_last)
    [verdict] = mode.verdicts.values()
    assert verdict.split(" ")[0] in convgrad.ALGORITHMS
    assert all(f"{name} " in verdict for name in convgrad.ALGORITHMS) and verdict.endswith(" ms)")
    assert not convgrad.cache_file().exists()
    monkeypatch.setattr(convgrad, "GEMM_MAX_BYTES", 0)  # the im2col copy "too big": not a candidate
    conv = convgrad._Conv(torch.empty(4, 8, 4, 4), model.weight, None, (1, 1), (1, 1))
    assert set(convgrad.probe(conv, torch.channels_last)) == {"onednn", "swapped-conv"}


def test_speed_rules_for_the_conv_grad() -> None:
    from tlbench import speed
    from tlbench.bench import BenchOptions
    from tlbench.errors import ConfigError
    from tlbench.train.config import run_config

    assert run_config("test_resnet", conv_grad=False).conv_grad == "off"  # a bool means on/off
    assert BenchOptions(conv_grad=True).conv_grad == "on"
    with pytest.raises(ConfigError, match="conv_grad"):
        run_config("test_resnet", conv_grad="sometimes")

    model = nn.Sequential(*[nn.Conv2d(3, 3, 3) for _ in range(3)])
    assert speed.choose(model, "cpu").conv_grad == "auto"
    assert speed.choose(model, "cpu", conv_grad="on").conv_grad == "on"
    for kwargs in ({"conv_grad": "off"}, {"compile": "on"}, {"amp": True}):
        assert speed.choose(model, "cpu", **kwargs).conv_grad == "off"  # type: ignore[arg-type]
    gpu = speed.choose(model, "cuda", conv_grad="on")
    assert gpu.conv_grad == "off" and "GPU" in gpu.why["conv_grad"]
    shapes = {"a": "gemm (x)", "b": "onednn (y)", "c": "gemm (z)"}
    record = speed.choose(model, "cpu").record() | {"conv_grad_shapes": shapes}
    assert speed.conv_grad_note(record) == "auto (gemm 2, onednn 1)"
    assert "eager, conv grad auto (gemm 2, onednn 1), " in speed.describe(record)


def test_a_damaged_cache_is_probed_anew_and_the_probe_leaves_the_global_rng_alone() -> None:
    path = convgrad.cache_file()
    path.parent.mkdir(parents=True)
    mode = ConvGrad("auto")
    path.write_text(json.dumps({mode._machine: {"8x4x4->8 k3x3 s1x1 p1x1": 1, "x": "y"}, "other": []}))
    model = nn.Conv2d(8, 8, 3, padding=1).to(memory_format=torch.channels_last)
    state = torch.get_rng_state()
    again = ConvGrad("auto")
    again.discover(model, (2, 8, 4, 4), torch.channels_last)
    assert torch.equal(torch.get_rng_state(), state)
    [verdict] = again.verdicts.values()
    assert verdict.split(" ")[0] in convgrad.ALGORITHMS
    assert json.loads(path.read_text())[mode._machine]["8x4x4->8 k3x3 s1x1 p1x1"] == verdict


def test_no_gemm_at_a_step_whose_im2col_is_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verdict made at a smaller batch (or `on`) does not make a huge im2col copy at a larger one."""
    calls: list[int] = []

    def gemm(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, *_: object) -> torch.Tensor:
        calls.append(len(x))
        return torch.zeros_like(weight)

    monkeypatch.setitem(convgrad.ALGORITHMS, "gemm", gemm)
    monkeypatch.setattr(convgrad, "GEMM_MAX_BYTES", 8 * 16 * 36 * 4 - 1)  # a batch of 8 is one float too big
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with ConvGrad("on"):
        conv(torch.randn(8, 4, 4, 4)).sum().backward()  # oneDNN's weight gradient
    assert calls == [] and conv.weight.grad is not None
    with ConvGrad("on"):
        conv(torch.randn(7, 4, 4, 4)).sum().backward()
    assert calls == [7]


def test_a_config_from_before_conv_grad_resumes_with_onednns_gradients() -> None:
    from tlbench.train.config import RunConfig, run_config

    old = run_config("test_resnet").to_dict()
    del old["conv_grad"]
    assert RunConfig.from_dict(old).conv_grad == "off"
    assert RunConfig.from_dict(run_config("test_resnet").to_dict()).conv_grad == "auto"
