"""The leakage rule: what a backbone's pretraining already saw of the evaluation data.

`leakage_flag` turns a run's recorded weights source and data info into one of the LEAK_* labels of
the report's `leakage` column (REFERENCE.md section 3). Pure string rules: no file, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

LEAK_SEEN = "seen: images+classes"
LEAK_CLASSES = "classes may overlap"
LEAK_NONE = "none"
LEAK_SYNTHETIC = "none (synthetic)"
LEAK_UNKNOWN = "unknown (custom weights)"

_IMAGENET_WEIGHTS = re.compile(r"in1k|in21k|in22k|in12k|imagenet", re.IGNORECASE)
_RANDOM_WEIGHTS = re.compile(r"^\s*none\b|random init", re.IGNORECASE)


def weights_kind(weights_source: str | None) -> str:
    """Classify a recorded weights source as "random", "imagenet" or "unknown".

    "random": `none (random init)`, what a run without pretrained weights records. "imagenet": a
    source naming ImageNet pretraining, such as the timm hub tags `in1k`, `in21k_ft_in1k`, `in21k`,
    `in22k`, `in12k` (`timm hub: timm/vgg19.tv_in1k`). Anything else (a local weight file with a
    neutral name, a bare URL, weights pretrained on other data) is "unknown".
    """
    if not weights_source:
        return "unknown"
    if _RANDOM_WEIGHTS.search(weights_source):
        return "random"
    if _IMAGENET_WEIGHTS.search(weights_source):
        return "imagenet"
    return "unknown"


def is_synthetic(data_info: Mapping[str, Any]) -> bool:
    """True for tlbench's synthetic data (`data_info["synthetic"]`, or a `synthetic...` spec)."""
    return bool(data_info.get("synthetic")) or str(data_info.get("spec") or "").startswith("synthetic")


def leakage_flag(weights_source: str | None, data_info: Mapping[str, Any]) -> str:
    """What the backbone's pretraining already saw of the evaluation data (REFERENCE.md section 3).

    The rule, first match wins:

    1. synthetic data -> "none (synthetic)": rendered images, nothing to have seen.
    2. random initialisation -> "none".
    3. weights not recognisably ImageNet-pretrained (see `weights_kind`) -> "unknown (custom
       weights)": the report cannot tell what they were trained on.
    4. ImageNet-pretrained weights on the standard mini-ImageNet 100 classes (`data_info`'s
       `standard_mini_imagenet`) -> "seen: images+classes". Every image of the classic forms
       (imagefolder, ravi-csv, pickle) and of the `timm/mini-imagenet` parquet train and validation
       splits comes from the ImageNet-1k *training* set, with the same label meaning; tlbench
       evaluates on the validation split, so the backbone was trained on the very images it is
       scored on. (Only the parquet *test* split, from ImageNet-1k val, is unseen; no run evaluates
       on it yet.) ImageNet-21k/12k pretraining also covers these images and classes.
    5. ImageNet-pretrained weights on any other class list -> "classes may overlap".

    Args:
        weights_source: The run's recorded weights source, e.g. "timm hub: timm/vgg19.tv_in1k" or
            "none (random init)".
        data_info: The recorded `resolved.data_info` (keys used: standard_mini_imagenet,
            synthetic, spec).

    Returns:
        One of the LEAK_* strings.
    """
    if is_synthetic(data_info):
        return LEAK_SYNTHETIC
    kind = weights_kind(weights_source)
    if kind == "random":
        return LEAK_NONE
    if kind == "unknown":
        return LEAK_UNKNOWN
    if data_info.get("standard_mini_imagenet"):
        return LEAK_SEEN
    return LEAK_CLASSES
