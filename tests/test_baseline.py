"""The zero-training baseline: the ImageNet-1k logits restricted to the data's classes, mapped right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tlbench.data.classes import _read_lines, mini_imagenet_wnids
from tlbench.errors import DataError
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


def _rigged_classifier(tmp_path: Path, favourite: int) -> Path:
    """A full test_resnet ImageNet classifier that always answers ImageNet class `favourite`."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[favourite] = 10.0
    path = tmp_path / "rigged.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_restricted_logits_pick_the_mapped_class(cli, tmp_path: Path) -> None:
    wnids = list(mini_imagenet_wnids())[:6]
    target = 4
    weights = _rigged_classifier(tmp_path, imagenet_indices(wnids)[target])
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
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["kind"] == "baseline" and config["imagenet1k_indices"] == imagenet_indices(wnids)
    # timm's evaluation crop: resize to 32 / 0.95 = 33 px, centre crop 32
    assert config["preprocessing"]["resize"] == 33 and config["preprocessing"]["center_crop"] == 32
    code, _, err = cli("run", "--resume", tmp_path / "b")
    assert code == 6 and "not a tlbench training run" in err
    # every answer is class 4: top-1 is its share of the validation split (2 of 12 images)
    assert summary["val_top1"] == pytest.approx(1 / 6)
    per_class = (tmp_path / "b" / "per_class.csv").read_text().splitlines()[1:]
    accs = [float(line.split(",")[-1]) for line in per_class]
    assert accs[target] == 1.0 and sum(accs) == 1.0


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
