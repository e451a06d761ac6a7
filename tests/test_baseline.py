"""The zero-training baseline: the ImageNet-1k logits restricted to the data's classes, mapped right."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tlbench.data.classes import _read_lines, mini_imagenet_wnids
from tlbench.errors import DataError
from tlbench.report import collect_runs
from tlbench.rundir import RunDir
from tlbench.train.baseline import imagenet_indices


def test_mapping_matches_timms_files() -> None:
    # timm ships the mini-ImageNet wnids and, line for line, their ImageNet-1k logit indices
    wnids = _read_lines("mini_imagenet_synsets.txt")
    indices = [int(i) for i in _read_lines("mini_imagenet_indices.txt")]
    assert imagenet_indices(wnids) == indices
    by_wnid = dict(zip(wnids, indices, strict=True))
    assert imagenet_indices(sorted(wnids)) == [by_wnid[w] for w in sorted(wnids)]


def test_non_imagenet_class_is_an_error() -> None:
    with pytest.raises(DataError, match=r"not ImageNet-1k wnids.*--no-baseline"):
        imagenet_indices(["n01532829", "n99999999"])


def _rigged_classifier(tmp_path: Path, logits: dict[int, float]) -> Path:
    """A full test_resnet ImageNet classifier whose logits are `logits` (ImageNet index: value), else 0."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        for index, value in logits.items():
            model.fc.bias[index] = value
    path = tmp_path / "rigged.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_restricted_logits_pick_the_mapped_class(cli, tmp_path: Path) -> None:
    wnids = list(mini_imagenet_wnids())[:6]
    indices = imagenet_indices(wnids)
    # class 4 first, then 0, 1, 2, 3, 5: top-1 always answers 4, top-5 never holds class 5
    ranking = [4, 0, 1, 2, 3, 5]
    restricted = [10.0 - ranking.index(c) for c in range(6)]
    weights = _rigged_classifier(tmp_path, {indices[c]: restricted[c] for c in range(6)} | {0: 50.0})
    code, _, err = cli(
        "baseline",
        "test_resnet",
        "--data",
        "synthetic:6x12@32",
        "--image-size",
        "32",
        "--weights",
        weights,
        "--device",
        "cpu",
        "--out",
        tmp_path / "b",
    )
    assert code == 0, err
    rd = RunDir(tmp_path / "b")
    run_file, summary = rd.read_config(), rd.read_summary()
    assert run_file.kind == "baseline" and run_file.resolved.imagenet1k_indices == indices
    assert run_file.config.weights == str(weights) and run_file.resolved.weights_source == f"file: {weights}"
    # timm's evaluation crop: resize to 32 / 0.95 = 33 px, centre crop 32
    assert run_file.resolved.preprocessing["resize"] == 33
    assert run_file.resolved.preprocessing["center_crop"] == 32
    code, _, err = cli("run", "--resume", tmp_path / "b")
    assert code == 6 and "is a baseline, not a training run" in err
    # every answer is class 4 (ImageNet class 0's larger logit is outside the data set's classes):
    # top-1 is its share of the validation split (2 of 12 images), top-5 all but class 5's images
    assert summary.kind == "baseline" and summary.val_images == 12 and summary.epochs == 0
    assert summary.best_val_top1 == summary.final_val_top1 == pytest.approx(1 / 6)
    assert summary.final_val_top5 == pytest.approx(5 / 6) and summary.best_epoch is None
    mean_loss = sum(math.log(sum(math.exp(v) for v in restricted)) - restricted[c] for c in range(6)) / 6
    assert summary.final_val_loss == pytest.approx(mean_loss, rel=1e-5)
    assert summary.params_trainable == 0 and summary.params_frozen == summary.params_total > 0
    assert summary.train_images_per_sec is None and summary.amp == "off" and summary.device == "cpu"
    per_class = rd.read_per_class()
    assert [r.imagenet1k_index for r in per_class] == indices and [r.wnid for r in per_class] == wnids
    assert [r.top1 for r in per_class] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert [(r.correct, r.total) for r in per_class][4] == (2, 2)
    # and the report reads it back as the baseline record of test_resnet
    records, skipped = collect_runs([tmp_path])
    assert skipped == [] and [(r.kind, r.backbone, r.recipe) for r in records] == [
        ("baseline", "test_resnet", "baseline")
    ]
    assert records[0].best_val_top1 == summary.best_val_top1 and records[0].image_size == 32
    # the same folder again is refused before anything is loaded
    code, _, err = cli("baseline", "test_resnet", "--data", "synthetic:6x12@32", "--out", tmp_path / "b")
    assert code == 6 and "already holds files" in err


def test_baseline_offline_without_weights(cli, tmp_path: Path) -> None:
    code, _, err = cli(
        "baseline", "test_resnet", "--data", "synthetic:6x12@32", "--device", "cpu", "--out", tmp_path / "b"
    )
    assert code == 3 and "--weights" in err
    assert not (tmp_path / "b" / "summary.json").exists()


def test_baseline_rejects_a_headless_checkpoint(cli, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file(model.state_dict(), str(tmp_path / "headless.safetensors"))
    code, _, err = cli(
        "baseline",
        "test_resnet",
        "--data",
        "synthetic:6x12@32",
        "--device",
        "cpu",
        "--weights",
        tmp_path / "headless.safetensors",
        "--out",
        tmp_path / "b",
    )
    assert code == 3 and "full test_resnet classifier" in err
