"""Segmentation and fusion networks, built by name through one registry.

Importing this package registers every model below; add one import per architecture
file.
"""

from __future__ import annotations

from .a2fseg import A2FSeg
from .lrrnet import LRRNet
from .registry import build_model, check_model_options, get_model_builder, list_models, register_model
from .resnet_unet import ResNet50UNet  # noqa: F401 - registers "resnet50_unet"
from .unet import MonaiUNet, TwoStageUNet, check_segmentation_input

__all__ = [
    "A2FSeg",
    "LRRNet",
    "build_model",
    "check_model_options",
    "get_model_builder",
    "list_models",
    "register_model",
    "MonaiUNet",
    "TwoStageUNet",
    "check_segmentation_input",
]
