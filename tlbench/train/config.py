"""The fully resolved configuration of one run: recipe values with the command line's overrides.

It is written verbatim to `config.json` and is all `--resume` needs to rebuild the run.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tlbench.errors import UsageError
from tlbench.train.recipes import Recipe

SCHEMA_VERSION = 1
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class RunConfig:
    backbone: str
    recipe: Recipe
    freeze: str
    seed: int = 0
    data: str | None = "synthetic"
    data_format: str | None = None
    split_seed: int = 0
    skip_corrupt: bool = False
    pretrained: bool = True
    weights: str | None = None
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    data_on_device: str = "auto"
    feature_cache: bool = True  # linear probe without augmentation: compute the features once
    max_time: float | None = None  # seconds
    out: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recipe"] = asdict(self.recipe)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        d["recipe"] = Recipe(**d["recipe"])
        return cls(**d)

    def run_name(self, now: datetime | None = None) -> str:
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        freeze = self.freeze.replace("%", "pct")
        backbone = re.sub(r"[^A-Za-z0-9_.-]", "_", self.backbone)
        return f"{stamp}-{backbone}-{self.recipe.name}-f{freeze}-s{self.seed}"

    def default_out(self) -> Path:
        return Path("results") / "runs" / self.run_name()


def parse_duration(text: str | None) -> float | None:
    """'90', '90s', '15m', '2h', '1h30m' -> seconds."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not m or not any(m.groups()):
        raise UsageError(f"--max-time {text!r} is not a duration", "use e.g. 90s, 15m, 2h or 1h30m")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s
