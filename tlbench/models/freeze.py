"""The layer list that `--freeze` counts in, and the parser for freeze specs.

A backbone is described as an ordered list of `LayerEntry`: entry 0 is always `input` (no
parameters, as in Keras), then one entry per layer group in forward order. `--freeze N` freezes
the first N entries, so `--freeze 11` on VGG19 freezes exactly what Keras' `model.layers[:11]`
freezes. Which groups a backbone has is decided in `tlbench.models.backbone`; this module only
counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tlbench.errors import ModelError, UsageError

FREEZE_FORMS = "N (a layer count, e.g. 11), P% (a share of the backbone's parameters, e.g. 50%), none or all"

_COUNT = re.compile(r"\d+")
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")


@dataclass(frozen=True)
class LayerEntry:
    """One entry of a backbone's layer list.

    Attributes:
        index: Position in the list; `--freeze N` freezes entries 0 to N-1.
        name: Keras-style name for VGG (`block3_conv4`), else the module prefix (`layer1.0`, `stem`).
        type: Class names of the modules in the entry, joined with `+` (`Conv2d+ReLU`).
        params: Number of parameters in the entry.
        frozen: Whether the entry is frozen in the model it was read from.
        modules: Module or parameter names (relative to the backbone) that make up the entry.
    """

    index: int
    name: str
    type: str
    params: int
    frozen: bool
    modules: tuple[str, ...]


def parse_freeze(spec: str | int, layers: list[LayerEntry], *, backbone: str | None = None) -> int:
    """Resolve a freeze spec to the number of leading layer entries to freeze.

    Args:
        spec: `N` (0 <= N <= len(layers)), `P%` (the shortest prefix of whole entries holding at
            least P % of the backbone's parameters), `none` (0) or `all` (len(layers)).
        layers: The backbone's layer list, entry 0 being `input`.
        backbone: Backbone name, used only to make error messages specific.

    Returns:
        How many leading entries to freeze.

    Raises:
        UsageError: The spec is not one of the accepted forms, or P is outside 0-100.
        ModelError: N is larger than the backbone's layer count.
    """
    text = str(spec).strip().lower()
    name = backbone or "this backbone"
    if text == "none":
        return 0
    if text == "all":
        return len(layers)
    if _COUNT.fullmatch(text):
        count = int(text)
        if count > len(layers):
            raise ModelError(
                f"--freeze {count} is out of range for {name}: it has {len(layers)} layer entries "
                f"(input included), so N must be 0-{len(layers)}",
                f"list them with `tlbench layers {backbone or 'BACKBONE'}`, or use a share like 50% or all",
            )
        return count
    match = _PERCENT.fullmatch(text)
    if match:
        percent = float(match.group(1))
        if not 0 <= percent <= 100:
            raise UsageError(
                f"--freeze {spec} is not a valid share: P% needs 0 <= P <= 100",
                "pass a share like 50%, or a layer count, none or all",
            )
        return _prefix_for_share(percent, layers)
    raise UsageError(
        f"--freeze {spec!r} is not understood",
        f"pass one of: {FREEZE_FORMS}",
    )


def _prefix_for_share(percent: float, layers: list[LayerEntry]) -> int:
    """Shortest N such that entries[:N] hold at least `percent` % of all parameters."""
    total = sum(entry.params for entry in layers)
    if percent <= 0 or total == 0:
        return 0
    # cum / total >= P / 100  <=>  100 * cum >= P * total: exact for whole-number P (no division).
    needed = percent * total
    cumulative = 0
    for count, entry in enumerate(layers, start=1):
        cumulative += entry.params
        if 100 * cumulative >= needed:
            return count
    return len(layers)
