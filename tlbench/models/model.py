"""The transfer model: a (partly) frozen backbone, pooled features and the Keras head.

    image -> backbone (first N layer entries frozen) -> global average pool | flatten
          -> fc1 Linear(hidden) + ReLU -> Dropout -> fc2 Linear(num_classes) -> logits

The head is the reference recipe's `Dense(512, relu, kernel_regularizer=l2(1e-4))`,
`Dropout(0.3)`, `Dense(n_classes)`; the softmax lives in the loss. `build_model` makes one,
`save_model` / `load_model` store and restore it bit-exactly.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.data import resolve_data_config
from torch import Tensor, nn

from tlbench._io import write_json, write_with
from tlbench._util import first_line
from tlbench.errors import ModelError, UsageError, WeightsError
from tlbench.models.backbone import (
    Backbone,
    VggFeatures,
    backbone_layers,
    create_backbone,
    layer_list,
    params_under,
)
from tlbench.models.freeze import LayerEntry, parse_freeze

KERAS_L2 = 1e-4  # Keras l2(1e-4): loss += 1e-4 * sum(W**2) over the Dense(512) kernel
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "tlbench-model/1"


def make_head(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The Keras head: `fc1` Linear + ReLU, Dropout, `fc2` Linear (logits).

    Both Linear layers start as Keras' `Dense` does: Glorot-uniform kernel, zero bias.
    """
    fc1, fc2 = nn.Linear(in_features, hidden), nn.Linear(hidden, num_classes)
    head = nn.Sequential(OrderedDict(fc1=fc1, act=nn.ReLU(inplace=True), drop=nn.Dropout(dropout), fc2=fc2))
    for layer in (fc1, fc2):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return head


class TransferModel(nn.Module):
    """A backbone whose first `freeze_index` layer entries are frozen, plus the Keras head.

    Frozen parameters have `requires_grad=False`, and frozen modules stay in eval mode whatever
    `train()` is told: BatchNorm keeps its running statistics and dropout stays off, as in Keras
    (TF 2), where a non-trainable BatchNorm runs in inference mode.

    The frozen part costs no backward compute and keeps no activations for backward:

    - VGG: `features` is cut into `frozen = features[:k]` and `trainable = features[k:]`; the
      frozen prefix runs under `torch.no_grad()`.
    - Whole backbone frozen (`all`, or every parameter frozen): the backbone and pooling run
      under `torch.no_grad()`; only the head builds an autograd graph.
    - Other families, partly frozen: requires_grad=False on a forward-order prefix of timm's
      parameter groups. Autograd records an op only when one of its inputs requires grad; the
      input image does not, and neither does any frozen parameter, so no op of the prefix is
      recorded and nothing of it is saved for backward (the first trainable op saves its input,
      as it must, exactly as after a no_grad prefix). Parameters of the stem group that are read
      at the start (a ViT's `cls_token`, `pos_embed`) fit this; one read later by a trainable
      block is a constant to autograd, which costs no activation memory either. Were a frozen
      group to run *after* a trainable one, gradients would still be right, it would only save
      less; timm's group order is forward order for the families checked (ResNet, ViT, ConvNeXt,
      EfficientNet, ...), and the tests measure the saved activations for a ResNet.

    Attributes:
        backbone_name: The timm name the model was built from.
        backbone: `VggFeatures` for VGG, else the timm model with `num_classes=0`.
        head: `fc1`, `act`, `drop`, `fc2`.
        layers: The backbone's layer list, entries below `freeze_index` marked frozen.
        freeze_spec: The freeze spec as given (`11`, `50%`, `none`, `all`).
        freeze_index: Number of leading layer entries frozen.
        weights_source: Where the backbone's weights came from.
        data_config: mean, std, interpolation, input_size, crop settings of the timm pretrained cfg.
        feature_dim: Width of the pooled (or flattened) features entering the head.
        l2: Factor of the Keras L2 penalty on `head.fc1.weight`.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        backbone_name: str,
        num_classes: int,
        pool: str,
        freeze_spec: str,
        freeze_index: int,
        image_size: int,
        hidden: int,
        dropout: float,
        l2: float = KERAS_L2,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone_name
        self.backbone = backbone.module
        self.is_vgg = backbone.is_vgg
        self.num_classes = num_classes
        self.pool = pool
        self.image_size = image_size
        self.hidden = hidden
        self.dropout = dropout
        self.l2 = l2
        self.weights_source = backbone.weights_source
        self.data_config: dict[str, Any] = dict(
            resolve_data_config(pretrained_cfg=backbone.pretrained_cfg, model=backbone.module)
        )
        self.extra: dict[str, Any] = {}
        self.feature_dim = self._feature_dim()
        self.head = make_head(self.feature_dim, hidden, num_classes, dropout)
        self.freeze_spec = freeze_spec
        self._freeze(freeze_index)
        self.train()

    # -- freezing ---------------------------------------------------------------------------------

    def _freeze(self, count: int) -> None:
        entries = layer_list(self.backbone)
        for entry in entries[:count]:
            for name in entry.modules:
                for param in params_under(self.backbone, name):
                    param.requires_grad_(False)
        self.freeze_index = count
        self.layers: list[LayerEntry] = layer_list(self.backbone, frozen_count=count)
        self._backbone_frozen = not any(p.requires_grad for p in self.backbone.parameters())
        if self.is_vgg:
            ends = [int(name.rsplit(".", 1)[1]) + 1 for e in entries[:count] for name in e.modules]
            self._split = len(self._vgg.features) if self._backbone_frozen else max(ends, default=0)
            # the frozen prefix stays in eval mode: a _bn variant's BatchNorm keeps its running statistics
            self._eval_names = (
                ["features"] if self._backbone_frozen else [f"features.{i}" for i in range(self._split)]
            )
        else:
            self._split = 0
            self._eval_names = [""] if self._backbone_frozen else _frozen_module_names(self.backbone)

    @property
    def frozen(self) -> nn.Module | None:
        """The frozen part of the backbone, or None when nothing is frozen.

        VGG: `features[:k]`, run under `torch.no_grad()`. Whole backbone frozen: the backbone,
        run under `torch.no_grad()`. Other families, partly frozen: an `nn.ModuleList` of the
        frozen modules (kept in eval mode; their parameters do not require grad). Parameters that
        belong to no submodule (a ViT's `cls_token`, `pos_embed`) are frozen but not listed.
        """
        if self.freeze_index == 0 or not any(e.params for e in self.layers[: self.freeze_index]):
            return None
        if self._backbone_frozen:
            return self.backbone
        if self.is_vgg:
            return self._vgg.features[: self._split]
        return nn.ModuleList(self.backbone.get_submodule(n) for n in self._eval_names)

    @property
    def trainable(self) -> nn.Module:
        """VGG: `features[k:]`, the part of the backbone that trains. Other families: the backbone."""
        if self.is_vgg:
            return self._vgg.features[self._split :]
        return self.backbone

    @property
    def _vgg(self) -> VggFeatures:
        """The backbone, which is a `VggFeatures` whenever `is_vgg`."""
        assert isinstance(self.backbone, VggFeatures)
        return self.backbone

    def train(self, mode: bool = True) -> TransferModel:
        """Set train/eval mode; frozen parts stay in eval mode either way."""
        super().train(mode)
        for name in self._eval_names:
            self.backbone.get_submodule(name).eval()
        return self

    # -- forward ----------------------------------------------------------------------------------

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled (or flattened) backbone features, shape (N, feature_dim)."""
        if self._backbone_frozen:
            with torch.no_grad():
                return self._features(x)
        return self._features(x)

    def _features(self, x: Tensor) -> Tensor:
        if self.is_vgg:
            layers = list(self._vgg.features)
            with torch.no_grad():
                for layer in layers[: self._split]:
                    x = layer(x)
            for layer in layers[self._split :]:
                x = layer(x)
            return x.mean(dim=(2, 3)) if self.pool == "avg" else x.flatten(1)
        # a timm model's methods (torch types any module attribute as Tensor | Module)
        features = self.backbone.forward_features(x)  # type: ignore[operator]
        if self.pool == "avg":  # the model's own global pooling: avg for CNNs, token for ViTs
            return self.backbone.forward_head(features, pre_logits=True)  # type: ignore[operator]
        return features.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (N, num_classes)."""
        return self.head(self.forward_features(x))

    def _feature_dim(self) -> int:
        size = self.image_size
        if self.is_vgg:  # five 2x2 max-pools: floor(size / 32) per side, no forward needed
            side = size // 32
            if side < 1:
                raise ModelError(
                    f"{self.backbone_name} needs images of at least 32 px, got {size} px",
                    "use --image-size 32 or more (224 matches the reference recipe)",
                )
            return self._vgg.num_features * (side * side if self.pool == "flatten" else 1)
        was_training = self.backbone.training
        self.backbone.eval()  # a dry forward must not touch BatchNorm statistics
        try:
            param = next(self.backbone.parameters())
            dummy = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
            with torch.no_grad():
                return int(self._features(dummy).shape[1])
        except (RuntimeError, AssertionError, ValueError) as exc:
            default = self.data_config["input_size"][-1]
            raise ModelError(
                f"{self.backbone_name} cannot take {size} px images ({first_line(exc)})",
                f"use another --image-size, e.g. {default}",
            ) from exc
        finally:
            self.backbone.train(was_training)

    # -- bookkeeping ------------------------------------------------------------------------------

    def l2_penalty(self) -> Tensor:
        """Keras `l2(1e-4)` on the Dense(512) kernel only: `1e-4 * sum(head.fc1.weight ** 2)`."""
        fc1: nn.Linear = self.head.fc1  # type: ignore[assignment]  # torch types it as Tensor | Module
        return self.l2 * fc1.weight.square().sum()

    def param_counts(self) -> dict[str, int]:
        """Parameter counts: total, trainable, frozen, backbone, head."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {
            "total": total,
            "trainable": trainable,
            "frozen": total - trainable,
            "backbone": sum(p.numel() for p in self.backbone.parameters()),
            "head": sum(p.numel() for p in self.head.parameters()),
        }

    def model_config(self) -> dict[str, Any]:
        """Everything `load_model` needs to rebuild this model, plus where its weights came from."""
        return {
            "backbone": self.backbone_name,
            "num_classes": self.num_classes,
            "pool": self.pool,
            "freeze": self.freeze_spec,
            "freeze_index": self.freeze_index,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "image_size": self.image_size,
            "feature_dim": self.feature_dim,
            "l2": self.l2,
            "data_config": self.data_config,
            "weights_source": self.weights_source,
            "param_counts": self.param_counts(),
            "timm_version": timm.__version__,
            "torch_version": torch.__version__,
        }


def _frozen_module_names(backbone: nn.Module) -> list[str]:
    """Outermost modules to keep in eval mode when a prefix of a timm model is frozen.

    A module qualifies when all its parameters are frozen; a parameter-free module (ReLU,
    pooling, dropout) when it is registered before the first module that owns a trainable
    parameter (registration order follows forward order in timm models).
    """
    names: list[str] = []
    seen_trainable = False
    for name, module in backbone.named_modules():
        if name and not any(name.startswith(n + ".") for n in names):
            params = list(module.parameters())
            all_frozen = bool(params) and not any(p.requires_grad for p in params)
            if all_frozen or (not params and not seen_trainable):
                names.append(name)
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            seen_trainable = True
    return names


def _check_args(num_classes: int, pool: str, image_size: int, hidden: int, dropout: float) -> None:
    from tlbench.config import Recipe
    from tlbench.options import check_field

    for name, value in (("pool", pool), ("hidden", hidden), ("dropout", dropout)):
        check_field(Recipe, name, value)  # the recipe's own rule for each head value
    if num_classes < 1:
        raise UsageError(f"num_classes must be at least 1, got {num_classes}", "check the dataset's classes")
    if image_size < 1:
        raise UsageError(f"image size must be positive, got {image_size}", "pass e.g. --image-size 224")


def build_model(
    backbone: str,
    num_classes: int,
    *,
    pool: str = "avg",
    freeze: str = "none",
    pretrained: bool = True,
    weights: str | None = None,
    image_size: int = 224,
    hidden: int = 512,
    dropout: float = 0.3,
    l2: float = KERAS_L2,
) -> TransferModel:
    """Build a transfer model: timm backbone, freeze, Keras head.

    Args:
        backbone: timm model name, optionally with a pretrained tag (`vgg19`, `resnet50.a1_in1k`).
        num_classes: Number of output classes.
        pool: `avg` (the backbone's global pooling) or `flatten` (the raw feature map).
        freeze: `N`, `P%`, `none` or `all`; see `parse_freeze`.
        pretrained: Load timm's pretrained weights (the Hugging Face cache; `HF_HUB_OFFLINE=1` is
            honoured); False gives a random initialisation.
        weights: A local weight file (`.safetensors`, `.pth`, `.pt`, `.bin`) or `local-dir:FOLDER`;
            wins over `pretrained`.
        image_size: Input size in pixels (square).
        hidden: Width of `fc1`.
        dropout: Dropout rate between `fc1` and `fc2`.
        l2: Factor of the Keras L2 penalty on `fc1`'s kernel (`l2_penalty`); 0 for none.

    Returns:
        The model, in train mode (frozen parts in eval mode).

    Raises:
        ModelError: Unknown backbone, out-of-range freeze count, image size the backbone cannot take.
        WeightsError: Weights unavailable, unreadable or not matching the backbone.
        UsageError: Malformed freeze spec or argument.
    """
    _check_args(num_classes, pool, image_size, hidden, dropout)
    # Check the freeze spec against the structure (meta device, instant) before fetching weights.
    freeze_index = parse_freeze(freeze, backbone_layers(backbone, image_size), backbone=backbone)
    created = create_backbone(backbone, pretrained=pretrained, weights=weights, image_size=image_size)
    return TransferModel(
        created,
        backbone_name=backbone,
        num_classes=num_classes,
        pool=pool,
        freeze_spec=str(freeze),
        freeze_index=freeze_index,
        image_size=image_size,
        hidden=hidden,
        dropout=dropout,
        l2=l2,
    )


def save_model(model: TransferModel, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write `folder/model.safetensors` and `folder/config.json`, each atomically.

    config.json holds `{"format": ..., "model": model.model_config(), **extra}`; it is written
    last, so a folder with a config.json is complete.

    Args:
        model: The model to save.
        folder: Destination folder (created if needed).
        extra: More top-level entries for config.json, e.g. class names and preprocessing.

    Raises:
        ValueError: `extra` uses a reserved key (`format`, `model`).
    """
    folder = Path(folder)
    extra = dict(extra or {})
    clash = {"format", "model"} & extra.keys()
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} are reserved in {CONFIG_NAME}")
    # Clone: safetensors refuses tensors that share memory, and needs contiguous CPU tensors.
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "backbone": model.backbone_name, "tlbench": FORMAT}
    write_with(folder / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    write_json(folder / CONFIG_NAME, {"format": FORMAT, "model": model.model_config(), **extra})


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> TransferModel:
    """Rebuild a model saved by `save_model` (no pretrained weights needed) and load its weights.

    Args:
        folder: The folder holding model.safetensors and config.json.
        map_location: Device to put the model on.

    Returns:
        The model in eval mode; its outputs equal the saved model's bit for bit. Entries of
        config.json other than `format` and `model` are in `model.extra`.

    Raises:
        WeightsError: Files missing, unreadable, or not matching each other.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise WeightsError(
            f"{folder} holds no saved model ({CONFIG_NAME} and {WEIGHTS_NAME} expected)",
            "point at a model folder written by tlbench (save_model)",
        )
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
        config = data["model"]
        model = build_model(
            config["backbone"],
            config["num_classes"],
            pool=config["pool"],
            freeze=str(config["freeze_index"]),  # the resolved count: a P% spec cannot drift
            pretrained=False,
            image_size=config["image_size"],
            hidden=config["hidden"],
            dropout=config["dropout"],
            l2=float(config.get("l2", KERAS_L2)),  # a recipe may have set another factor
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(
            f"{config_path} is not a tlbench model config ({first_line(exc)})",
            "point at a model folder written by tlbench (save_model)",
        ) from exc
    try:
        state = load_file(str(weights_path), device="cpu")
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise WeightsError(
            f"{weights_path} does not match the model in {CONFIG_NAME}: {first_line(exc, with_type=False)}",
            "save the model again, or point at the folder it was saved in",
        ) from exc
    model.freeze_spec = str(config.get("freeze", config["freeze_index"]))
    model.weights_source = f"file: {weights_path}"
    model.data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in config["data_config"].items()}
    model.extra = {k: v for k, v in data.items() if k not in ("format", "model")}
    return model.to(map_location).eval()
