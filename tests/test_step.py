"""The one training step: the Keras loss, the schedule, top-k counting, the compile fallback, and
that `tlbench bench` times this step rather than a copy of it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F


def _model(l2: float = 1e-2) -> torch.nn.Module:
    from tlbench.models import build_model

    torch.manual_seed(0)
    return build_model("test_resnet", 4, pretrained=False, image_size=32, dropout=0.0, l2=l2)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 4, (6,), generator=g)


@pytest.mark.parametrize("recipe", ["keras-vgg19", "timm-ft"])
def test_step_loss_is_cross_entropy_plus_keras_l2(recipe: str) -> None:
    """The returned loss is the recipe's: cross-entropy (with its label smoothing) + l2 * sum(fc1.W**2),
    computed on the weights before the update; and the update moves only trainable weights."""
    from tlbench.config import get_recipe
    from tlbench.train.step import TrainStep

    model, (x, y) = _model(), _batch()
    rec = get_recipe(recipe)
    step = TrainStep(model, rec, torch.device("cpu"), None, steps_per_epoch=10)
    model.train()
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, label_smoothing=rec.label_smoothing)
        expected += model.l2 * model.head.fc1.weight.square().sum()
    before = model.head.fc1.weight.detach().clone()
    loss = step(x, y)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert not torch.equal(before, model.head.fc1.weight)
    mean_loss, top1 = step.totals()
    assert step.seen == 6 and mean_loss == pytest.approx(float(loss), rel=1e-6) and 0 <= top1 <= 1


def test_schedule_is_warmup_then_cosine_per_step() -> None:
    """timm-ft: 1 warm-up epoch rising (s + 1) / w, then a cosine to 0 over the rest (pinned values)."""
    from tlbench.config import get_recipe
    from tlbench.train.step import TrainStep, lr_factor

    rec = get_recipe("timm-ft").replace(epochs=3)
    factor = lr_factor(rec, steps_per_epoch=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(20) == pytest.approx(0.5)  # halfway through the 20 cosine steps
    assert factor(29) == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert factor(40) == pytest.approx(0.0)  # past the end it stays at 0
    assert lr_factor(get_recipe("keras-vgg19"), 10)(12345) == 1.0  # the reference recipe: constant

    step = TrainStep(_model(), rec, torch.device("cpu"), None, steps_per_epoch=10)
    x, y = _batch()
    seen = [step.lr]
    for _ in range(11):
        step(x, y)
        seen.append(step.lr)
    assert seen[0] == pytest.approx(rec.lr * 0.1) and seen[10] == pytest.approx(rec.lr * 1.0)


def test_correct_at_k_matches_a_direct_count() -> None:
    from tlbench.train.evaluate import correct_at_k

    g = torch.Generator().manual_seed(3)
    logits, y = torch.randn(97, 7, generator=g), torch.randint(0, 7, (97,), generator=g)
    direct = [int((logits.topk(k, 1).indices == y[:, None]).any(1).sum()) for k in (1, 5)]
    assert correct_at_k(logits, y, (1, 5)) == direct
    assert correct_at_k(logits, y, (10,)) == [97]  # k past the class count: every row


def test_compile_fallback_runs_eagerly_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compile that fails at its first call (as on a machine without a compiler) falls back to
    the eager model with the same outputs, and says so once."""
    from tlbench.train.step import CompileFallback

    def broken_compile(module: torch.nn.Module, **_: object) -> object:
        def call(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C compiler\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    model, (x, _y) = _model(), _batch()
    model.eval()
    wrapped = CompileFallback(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = wrapped(x)
    assert torch.equal(out, model(x))
    assert not wrapped.compiled and wrapped.compile_error == "RuntimeError: no C compiler"
    assert any("running eagerly" in str(w.message) for w in caught)


def test_bench_times_the_step_tlbench_run_executes() -> None:
    """`tlbench bench`'s train measurement is a `TrainStep` over the recipe's model, and its first
    loss equals that of a TrainStep built as the trainer builds it."""
    from tlbench.bench import BenchOptions
    from tlbench.bench.measure import BackboneBench
    from tlbench.train.step import TrainStep

    bench = BackboneBench("test_resnet", BenchOptions(device="cpu", image_size=32, batch_size=4))
    step = bench.train_step(4)
    assert isinstance(step, TrainStep)
    x, y = bench.inputs(4)
    assert step.model is bench.model and step.label_smoothing == bench.recipe.label_smoothing
    bench.model.eval()  # no dropout: the loss is a function of the weights alone
    with torch.no_grad():
        expected = F.cross_entropy(bench.model(x), y) + bench.model.l2_penalty()
    assert float(step(x, y)) == pytest.approx(float(expected), rel=1e-5)
