"""Where models are built: timm backbones, the Keras layer list for --freeze, weights, the head.

Importing this package imports torch and timm; `tlbench` itself stays cheap to import.
"""

from tlbench.models.backbone import VggFeatures, backbone_layers, list_backbones
from tlbench.models.freeze import LayerEntry, parse_freeze
from tlbench.models.model import TransferModel, build_model, load_model, save_model

__all__ = [
    "LayerEntry",
    "TransferModel",
    "VggFeatures",
    "backbone_layers",
    "build_model",
    "list_backbones",
    "load_model",
    "parse_freeze",
    "save_model",
]
