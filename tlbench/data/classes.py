"""The mini-ImageNet class list, pinned to the one timm ships.

Classes are always sorted by wnid; a run records the list's short hash so two results can be
checked to use the same label meaning. The files are read from timm's package data without
importing timm (which would import torch).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

from tlbench.errors import DataError


def _timm_info_dir() -> Path:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("timm is not installed", "install tlbench's dependencies: pip install -e .")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def _read_lines(name: str) -> list[str]:
    path = _timm_info_dir() / name
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"cannot read timm's {name} ({exc})", "reinstall timm >= 1.0.9") from exc


@cache
def mini_imagenet_wnids() -> tuple[str, ...]:
    """The standard 100 mini-ImageNet wnids (Ravi & Larochelle), sorted."""
    return tuple(sorted(_read_lines("mini_imagenet_synsets.txt")))


@cache
def imagenet1k_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in logit order."""
    return tuple(_read_lines("imagenet_synsets.txt"))


def class_hash(classes: list[str] | tuple[str, ...]) -> str:
    """A short, stable fingerprint of an ordered class list."""
    return hashlib.sha256("\n".join(classes).encode()).hexdigest()[:12]


def is_standard_mini_imagenet(classes: list[str] | tuple[str, ...]) -> bool:
    return tuple(sorted(classes)) == mini_imagenet_wnids()


STANDARD_CLASS_LIST = "ravi-larochelle-100 (timm mini_imagenet_synsets.txt)"
