"""Models to trace: presets built from packaged configs (``sd15``, ``sd21``, ``sdxl``, ``sd3``,
``flux``, ``pixart``, ``tiny``, ``reference``) and local diffusers model folders (a UNet, or an
SD3, Flux or PixArt transformer), on ``meta`` or with real or seeded random weights."""

from shapetrace.models.built import BuiltModel, check_size
from shapetrace.models.loading import build_model, load_folder, load_unet_folder
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
    "load_folder",
    "load_unet_folder",
    "read_config",
    "scheduler_config",
    "text_encoder_config",
    "unet_config",
]
