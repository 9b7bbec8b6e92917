"""The model presets, read from ``shapetrace/models/configs/presets.json``.

A preset names config files shipped in the package, one per part (``unet`` or
``transformer``, ``text_encoder``, ``text_encoder_2``, ``scheduler``), its native image size
and its text length, or, for the tutorials' reference model, its constructor arguments. The
files are the models' published configs, facts checked by parameter count.
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
    "DENOISER",
    "PRESETS",
    "Family",
    "Preset",
    "get_preset",
    "part_config",
    "read_config",
    "scheduler_config",
    "text_encoder_config",
    "unet_config",
]

Family = Literal["unet", "sd3", "flux", "pixart", "reference"]
_FAMILIES: tuple[str, ...] = ("unet", "sd3", "flux", "pixart", "reference")
#: The part that denoises, per family.
DENOISER = {"unet": "unet", "sd3": "transformer", "flux": "transformer", "pixart": "transformer"}
Part = Literal["unet", "transformer", "text_encoder", "text_encoder_2", "scheduler"]
_CONFIG_PACKAGE = "shapetrace.models"


@dataclass(frozen=True)
class Preset:
    """One named model: its family, its packaged config file per part, its native size.

    ``parts`` maps ``unet`` or ``transformer``, ``text_encoder``, ``text_encoder_2`` and
    ``scheduler`` to file names in ``models/configs``; ``reference`` holds ``ReferenceModel``
    keyword arguments; ``context_tokens`` is how many text tokens the denoiser is given.
    """

    name: str
    family: Family
    description: str = ""
    native: tuple[int, int] = (512, 512)
    context_tokens: int = 77
    parts: Mapping[str, str] = field(default_factory=dict)
    reference: Mapping[str, Any] = field(default_factory=dict)

    @property
    def unet(self) -> str | None:
        return self.parts.get("unet")

    @property
    def text_encoder(self) -> str | None:
        return self.parts.get("text_encoder")

    @property
    def scheduler(self) -> str | None:
        return self.parts.get("scheduler")

    @property
    def text_parts(self) -> tuple[str, ...]:
        """The text encoders this preset ships configs for, e.g. ("text_encoder", ...)."""
        return tuple(p for p in ("text_encoder", "text_encoder_2") if p in self.parts)


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
        parts = dict(entry.get("parts") or {})
        if family in DENOISER and not parts.get(DENOISER[family]):
            raise ModelLoadError(
                f"presets.json: {family} preset {name!r} names no {DENOISER[family]!r} config"
            )
        h, w = entry.get("native", (512, 512))
        presets[name] = Preset(
            name=name,
            family=cast(Family, family),
            description=entry.get("description", ""),
            native=(int(h), int(w)),
            context_tokens=int(entry.get("context_tokens", 77)),
            parts=MappingProxyType(parts),
            reference=MappingProxyType(dict(entry.get("reference") or {})),
        )
    return MappingProxyType(presets)


#: Every preset by name: ``sd15``, ``sd21``, ``sdxl``, ``sd3``, ``flux``, ``pixart``, ``tiny``,
#: ``reference``.
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
        from shapetrace._checks import shorten

        known = ", ".join(sorted(PRESETS))
        raise ModelLoadError(
            f"unknown model preset {shorten(name)}; choose one of {known}, or pass the path of "
            "a local diffusers model folder"
        ) from None


def _config(name: str, part: str) -> dict[str, Any]:
    """A fresh copy of one part's config for a preset."""
    preset = get_preset(name)
    filename = preset.parts.get(part)
    if filename is None:
        have = ", ".join(n for n, p in PRESETS.items() if part in p.parts)
        raise ModelLoadError(
            f"preset {name!r} ({preset.family}) has no {part} config; presets with one: {have}"
        )
    return read_config(filename)


def part_config(name: str, part: str) -> dict[str, Any]:
    """The config of any part of a preset (``"text_encoder_2"``, ``"transformer"``, ...).

    Example::

        >>> part_config("sdxl", "text_encoder_2")["hidden_size"]
        1280
    """
    return _config(name, part)


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
