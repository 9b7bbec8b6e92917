"""Models to trace: presets built from packaged configs (``sd15``, ``tiny``, ``reference``)
and local diffusers UNet folders, on ``meta`` or with real or seeded random weights."""

from shapetrace.models.built import BuiltModel, check_size
from shapetrace.models.loading import build_model, load_unet_folder
from shapetrace.models.presets import (
    PRESETS,
    Preset,
    get_preset,
    read_config,
    scheduler_config,
    text_encoder_config,
    unet_config,
)

__all__ = [
    "PRESETS",
    "BuiltModel",
    "Preset",
    "build_model",
    "check_size",
    "get_preset",
    "load_unet_folder",
    "read_config",
    "scheduler_config",
    "text_encoder_config",
    "unet_config",
]
