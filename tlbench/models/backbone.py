"""Backbones: a timm model's feature extractor without its classifier, and its layer list.

The VGG family is special-cased to match Keras Applications (`include_top=False`): the backbone
is timm's `features` only (the 16 convolutions of VGG19, 20,024,384 parameters), without the
fc6/fc7 `pre_logits` ConvMlp, and its layer list follows Keras' layer indexing so that
`--freeze 11` means what `model.layers[:11]` means in Keras. Every other family is
`timm.create_model(name, num_classes=0)` with a layer list made of timm's fine parameter groups.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg, group_parameters, split_model_name_tag
from torch import nn

from tlbench.errors import ModelError
from tlbench.models.freeze import LayerEntry
from tlbench.models.weights import (
    create_pretrained,
    drop_top,
    load_backbone_state,
    read_state_dict,
    resolve_weights_path,
)

VGG_ARCHS = frozenset(f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn"))
RANDOM_INIT = "none (random init)"


class VggFeatures(nn.Module):
    """VGG's convolutional base: timm's `features` only, as Keras' `include_top=False`.

    The parameter names (`features.0.weight`, ...) are timm's, so a timm or torchvision VGG
    checkpoint loads into it once its top (`pre_logits`, `head`, `classifier`) is dropped.
    """

    def __init__(self, features: nn.Sequential, pretrained_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.features = features
        self.pretrained_cfg = pretrained_cfg
        convs = [m for m in features if isinstance(m, nn.Conv2d)]
        self.num_features = convs[-1].out_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, (N, 512, H/32, W/32)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@dataclass
class Backbone:
    """A created backbone and the facts around it.

    Attributes:
        module: `VggFeatures` for VGG, else the timm model with `num_classes=0`.
        is_vgg: Whether the Keras VGG layout applies.
        weights_source: Where the weights came from (`timm hub: ...`, `file: ...`, `none (random init)`).
        pretrained_cfg: timm's pretrained config of the model (mean, std, input size, ...).
    """

    module: nn.Module
    is_vgg: bool
    weights_source: str
    pretrained_cfg: dict[str, Any]


def architecture(backbone: str) -> str:
    """The timm architecture name without its pretrained tag (`vgg19.tv_in1k` -> `vgg19`)."""
    return split_model_name_tag(backbone)[0]


def is_vgg(backbone: str) -> bool:
    """Whether `backbone` is a VGG (vgg11/13/16/19 and the `_bn` variants), tag or not."""
    return architecture(backbone) in VGG_ARCHS


def check_backbone(backbone: str) -> None:
    """Raise a `ModelError` naming the closest matches unless timm knows `backbone` (and its tag).

    Raises:
        ModelError: Unknown architecture or unknown pretrained tag.
    """
    arch, tag = split_model_name_tag(backbone)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        closest = f" (closest: {', '.join(close)})" if close else ""
        pattern = f"*{arch[:4]}*" if arch else "*"
        raise ModelError(
            f"unknown backbone {backbone!r}{closest}",
            f"list the available ones with `tlbench backbones '{pattern}'`",
        )
    if tag:
        try:
            get_pretrained_cfg(backbone)
        except RuntimeError as exc:
            tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
            raise ModelError(
                f"{arch} has no pretrained tag {tag!r} (it has: {', '.join(tags) or 'none'})",
                f"use one of those tags or just {arch}",
            ) from exc


def list_backbones(pattern: str | None = None) -> list[tuple[str, bool]]:
    """List timm architectures and whether timm knows pretrained weights for them.

    Args:
        pattern: fnmatch pattern (`resnet*`); a pattern without wildcards matches as a substring.

    Returns:
        `(name, has_pretrained)` pairs, names without pretrained tags, in timm's order.
    """
    if pattern and not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    names = timm.list_models(pattern or "")
    with_weights = set(timm.list_models(pattern or "", pretrained=True, include_tags=False))
    return [(name, name in with_weights) for name in names]


def _model_kwargs(backbone: str, image_size: int) -> dict[str, Any]:
    """`timm.create_model` keyword arguments for a classifier-free model at `image_size`."""
    kwargs: dict[str, Any] = {"num_classes": 0}
    cfg = get_pretrained_cfg(backbone)
    # Fixed-size models (ViTs, ...) size their position embeddings by img_size; timm resamples
    # pretrained ones to fit. Convolutional models take any size and would reject the argument.
    if cfg is not None and cfg.fixed_input_size and image_size != cfg.input_size[-1]:
        kwargs["img_size"] = image_size
    return kwargs


def _create(backbone: str, image_size: int) -> nn.Module:
    """A randomly initialised timm model without classifier (on the current default device)."""
    kwargs = _model_kwargs(backbone, image_size)
    try:
        return timm.create_model(backbone, **kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs:
            raise
        cfg = get_pretrained_cfg(backbone)
        size = cfg.input_size[-1] if cfg is not None else "its default"
        raise ModelError(
            f"{backbone} takes a fixed input size and cannot be built for {image_size} px",
            f"use --image-size {size}",
        ) from exc


def _random_vgg_features(backbone: str) -> tuple[nn.Sequential, dict[str, Any]]:
    """VGG `features` with timm's initialisation, without allocating the 120 M fc6/fc7 weights.

    The full model is built on the meta device (no memory, no init), then only `features` is
    materialised and initialised the way timm's VGG does it (Kaiming normal, fan-out, for the
    convolutions; zero biases; BatchNorm weight 1, bias 0, fresh running statistics).
    """
    with torch.device("meta"):
        model = timm.create_model(backbone, num_classes=0)
    features = _vgg_features(model).to_empty(device="cpu")
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
    return features, _pretrained_cfg(model)


def _vgg_features(model: nn.Module) -> nn.Sequential:
    """A timm VGG's convolutional base, its `features`."""
    return model.features  # type: ignore[return-value]  # torch types any submodule as Tensor | Module


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """A copy of the pretrained config, the plain dict timm sets on every model it creates."""
    return dict(model.pretrained_cfg)  # type: ignore[arg-type]  # torch types it as Tensor | Module


def create_backbone(
    backbone: str,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    image_size: int = 224,
) -> Backbone:
    """Create a backbone with the requested weights.

    Args:
        backbone: timm model name, optionally with a pretrained tag.
        pretrained: Load timm's pretrained weights (ignored when `weights` is given).
        weights: A local weight file or `local-dir:FOLDER`; wins over `pretrained`.
        image_size: Input size (used by fixed-size models such as ViTs).

    Returns:
        The backbone and where its weights came from.

    Raises:
        ModelError: Unknown backbone.
        WeightsError: The weights cannot be had or do not fit.
    """
    check_backbone(backbone)
    vgg = is_vgg(backbone)
    if weights is None and pretrained:
        model, source = create_pretrained(backbone, **_model_kwargs(backbone, image_size))
        cfg = _pretrained_cfg(model)
        if vgg:
            return Backbone(VggFeatures(_vgg_features(model), cfg), True, source, cfg)
        return Backbone(model, False, source, cfg)

    if vgg:
        features, cfg = _random_vgg_features(backbone)
        module: nn.Module = VggFeatures(features, cfg)
    else:
        module = _create(backbone, image_size)
        cfg = _pretrained_cfg(module)
    source = RANDOM_INIT
    if weights is not None:
        path = resolve_weights_path(weights)
        source = f"file: {path}"
        state = drop_top(read_state_dict(path), cfg.get("classifier"), vgg=vgg)
        load_backbone_state(module, state, source=source, backbone=backbone)
    return Backbone(module, vgg, source, cfg)


def _meta_backbone(backbone: str, image_size: int) -> nn.Module:
    """The backbone's structure on the meta device: shapes and names only, instant, no memory."""
    with torch.device("meta"):
        if is_vgg(backbone):
            model = timm.create_model(backbone, num_classes=0)
            return VggFeatures(_vgg_features(model), _pretrained_cfg(model))
        return _create(backbone, image_size)


def backbone_layers(backbone: str, image_size: int = 224) -> list[LayerEntry]:
    """The layer list that `--freeze` counts in, without loading any weights.

    Args:
        backbone: timm model name.
        image_size: Input size (changes the parameter count of fixed-size models only).

    Returns:
        Entry 0 `input`, then the backbone's layers in forward order, none frozen.

    Raises:
        ModelError: Unknown backbone.
    """
    check_backbone(backbone)
    return layer_list(_meta_backbone(backbone, image_size))


def layer_list(module: nn.Module, frozen_count: int = 0) -> list[LayerEntry]:
    """The layer list of a backbone made by `create_backbone`.

    Args:
        module: The backbone (`VggFeatures` or a timm model with `num_classes=0`).
        frozen_count: How many leading entries to mark as frozen.
    """
    if isinstance(module, VggFeatures):
        groups = list(_vgg_groups(module.features))
    else:
        groups = list(_timm_groups(module))
    entries = [LayerEntry(0, "input", "Input", 0, frozen_count > 0, ())]
    for index, (name, kind, names) in enumerate(groups, start=1):
        params = sum(p.numel() for n in names for p in params_under(module, n))
        entries.append(LayerEntry(index, name, kind, params, index < frozen_count, names))
    return entries


def params_under(module: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters of submodule `name`, or the parameter called `name` itself."""
    try:
        return list(module.get_submodule(name).parameters())
    except AttributeError:
        return [module.get_parameter(name)]


def _vgg_groups(features: nn.Sequential) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """Keras VGG layers over timm's `features`: one entry per conv (with its BN and ReLU), one per pool.

    Keras names them `block{b}_conv{i}` and `block{b}_pool`; a block ends at each max-pool.
    """
    block, conv = 1, 0
    current: list[int] = []

    def close() -> tuple[str, str, tuple[str, ...]]:
        kind = "+".join(type(features[i]).__name__ for i in current)
        return f"block{block}_conv{conv}", kind, tuple(f"features.{i}" for i in current)

    for i, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            if current:
                yield close()
                current = []
            yield f"block{block}_pool", type(layer).__name__, (f"features.{i}",)
            block, conv = block + 1, 0
        elif isinstance(layer, nn.Conv2d):
            if current:
                yield close()
            conv += 1
            current = [i]
        else:  # BatchNorm, ReLU: part of the conv before them, as in Keras' Conv2D(activation=relu)
            current.append(i)
    if current:
        yield close()


def _timm_groups(model: nn.Module) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """timm's fine parameter groups (`group_matcher(coarse=False)`) in forward order.

    timm sorts the groups by the ordinals its matcher assigns (stem first, then blocks by index)
    and merges final norms (ordinal 99999) into the last block's group; parameters no pattern
    matches (e.g. a `head.norm` kept with num_classes=0) form a last group of their own.
    """
    # timm's matcher where the model has one (torch types any module attribute as Tensor | Module)
    has_matcher = hasattr(model, "group_matcher")
    matcher: Any = model.group_matcher(coarse=False) if has_matcher else None  # type: ignore[operator]
    if matcher is None:
        order: dict[str, int] = {}
        for param_name, _ in model.named_parameters():
            order.setdefault(param_name.split(".", 1)[0], len(order))
        matcher = lambda param_name: order[param_name.split(".", 1)[0]]  # noqa: E731
    groups = group_parameters(model, matcher)
    under = _param_names_under(model)
    for _, param_names in sorted(groups.items()):
        members = set(param_names)
        owned: list[str] = []
        for param_name in param_names:
            prefix = _largest_owned_prefix(param_name, members, under)
            if prefix not in owned:
                owned.append(prefix)
        yield _group_name(owned, param_names, matcher), _group_kind(model, owned), tuple(owned)


def _param_names_under(model: nn.Module) -> dict[str, set[str]]:
    """Map each module prefix (`layer1`, `layer1.0`, ...) to the parameter names below it."""
    under: dict[str, set[str]] = {}
    for param_name, _ in model.named_parameters():
        parts = param_name.split(".")
        for depth in range(1, len(parts)):
            under.setdefault(".".join(parts[:depth]), set()).add(param_name)
    return under


def _largest_owned_prefix(param_name: str, members: set[str], under: dict[str, set[str]]) -> str:
    """The outermost module whose parameters all belong to this group (else the parameter)."""
    parts = param_name.split(".")
    for depth in range(1, len(parts)):
        prefix = ".".join(parts[:depth])
        if under[prefix] <= members:
            return prefix
    return param_name


def _group_name(owned: list[str], param_names: list[str], matcher: Any) -> str:
    """`layer1.0` for a single module; the matcher's name (`stem`) for a plain pattern; else joined."""
    if len(owned) == 1:
        return owned[0]
    if isinstance(matcher, dict):
        keys = {_matcher_key(matcher, n) for n in param_names}
        if len(keys) == 1:
            key = keys.pop()
            spec = matcher.get(key) if key else None
            if isinstance(spec, str) and re.compile(spec).groups == 0:
                return str(key)
    return "+".join(owned)


def _matcher_key(matcher: dict[str, Any], param_name: str) -> str | None:
    for key, spec in matcher.items():
        specs = [s[0] for s in spec] if isinstance(spec, list | tuple) else [spec]
        if any(s is not None and re.match(s, param_name) for s in specs):
            return key
    return None


def _group_kind(model: nn.Module, owned: list[str]) -> str:
    kinds: list[str] = []
    for name in owned:
        try:
            kind = type(model.get_submodule(name)).__name__
        except AttributeError:
            kind = "Parameter"
        if kind not in kinds:
            kinds.append(kind)
    return "+".join(kinds)
