"""The model presets, read from ``shapetrace/models/configs/presets.json``.

A preset names config files shipped in the package (UNet, text encoder, scheduler) or, for the
seeds' reference model, its constructor arguments. Adding SD 2.1 or SDXL is a new entry in
``presets.json`` plus their config files, not new code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal, cast

from shapetrace.errors import ModelLoadError

__all__ = [
    "PRESETS",
    "Family",
    "Preset",
    "get_preset",
    "read_config",
    "scheduler_config",
    "text_encoder_config",
    "unet_config",
]

Family = Literal["unet", "reference"]
_FAMILIES: tuple[str, ...] = ("unet", "reference")
_CONFIG_PACKAGE = "shapetrace.models"


@dataclass(frozen=True)
class Preset:
    """One named model: which family it is and which packaged config files describe it.

    ``unet``, ``text_encoder`` and ``scheduler`` are file names in ``models/configs`` (or None
    where the preset has none); ``reference`` holds ``ReferenceModel`` keyword arguments.
    """

    name: str
    family: Family
    description: str = ""
    unet: str | None = None
    text_encoder: str | None = None
    scheduler: str | None = None
    reference: Mapping[str, Any] = field(default_factory=dict)


@cache
def _config_text(filename: str) -> str:
    """The text of one packaged config file, read once."""
    resource = resources.files(_CONFIG_PACKAGE) / "configs" / filename
    if not resource.is_file():
        raise ModelLoadError(
            f"config file {filename!r} is not in {_CONFIG_PACKAGE}/configs; the package is "
            "incomplete, reinstall shapetrace"
        )
    return resource.read_text(encoding="utf-8")


def read_config(filename: str) -> dict[str, Any]:
    """The parsed JSON of one packaged config file, as a new dict each call.

    Example::

        >>> read_config("sd15_unet.json")["block_out_channels"]
        [320, 640, 1280, 1280]
    """
    data: dict[str, Any] = json.loads(_config_text(filename))
    return data


def _load_presets() -> Mapping[str, Preset]:
    """Parse presets.json into Preset objects, checking each entry's family and files."""
    presets: dict[str, Preset] = {}
    for name, entry in read_config("presets.json").items():
        family = entry.get("family")
        if family not in _FAMILIES:
            raise ModelLoadError(
                f"presets.json: preset {name!r} has family {family!r}; use one of {_FAMILIES}"
            )
        if family == "unet" and not entry.get("unet"):
            raise ModelLoadError(f"presets.json: unet preset {name!r} names no 'unet' config")
        presets[name] = Preset(
            name=name,
            family=cast(Family, family),
            description=entry.get("description", ""),
            unet=entry.get("unet"),
            text_encoder=entry.get("text_encoder"),
            scheduler=entry.get("scheduler"),
            reference=MappingProxyType(dict(entry.get("reference") or {})),
        )
    return MappingProxyType(presets)


#: Every preset by name: ``sd15``, ``tiny``, ``reference`` (and whatever presets.json adds).
PRESETS: Mapping[str, Preset] = _load_presets()


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ModelLoadError listing the known names otherwise.

    Example::

        >>> get_preset("sd15").unet
        'sd15_unet.json'
    """
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ModelLoadError(
            f"unknown model preset {name!r}; choose one of {known}, or pass the path of a "
            "local diffusers UNet folder"
        ) from None


def _config(name: str, part: Literal["unet", "text_encoder", "scheduler"]) -> dict[str, Any]:
    """A fresh copy of one part's config for a preset."""
    preset = get_preset(name)
    filename: str | None = getattr(preset, part)
    if filename is None:
        raise ModelLoadError(
            f"preset {name!r} ({preset.family}) has no separate {part} config; "
            f"presets with one: {', '.join(n for n, p in PRESETS.items() if getattr(p, part))}"
        )
    return read_config(filename)


def unet_config(name: str) -> dict[str, Any]:
    """The diffusers ``UNet2DConditionModel`` config of a preset, as a new dict.

    Example::

        >>> unet_config("tiny")["cross_attention_dim"]
        64
    """
    return _config(name, "unet")


def text_encoder_config(name: str) -> dict[str, Any]:
    """The transformers ``CLIPTextConfig`` fields of a preset's text encoder, as a new dict.

    Its ``hidden_size`` is the UNet's ``cross_attention_dim``: context (B, 77, hidden_size).

    Example::

        >>> text_encoder_config("sd15")["hidden_size"]
        768
    """
    return _config(name, "text_encoder")


def scheduler_config(name: str) -> dict[str, Any]:
    """The diffusers scheduler config of a preset (SD 1.5's PNDM for the shipped ones).

    Example::

        >>> scheduler_config("tiny")["num_train_timesteps"]
        1000
    """
    return _config(name, "scheduler")
