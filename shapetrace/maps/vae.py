"""The image under the maps: a local VAE decodes the final latents, safetensors only.

A diffusers pipeline folder holds the VAE in ``vae/`` (``config.json`` and
``diffusion_pytorch_model.safetensors``); ``find_vae`` looks there (also beside a ``unet/``
folder given as the model), ``load_vae`` checks the folder before diffusers reads it, and
``decode`` turns latents into an RGB image the way diffusers' pipelines do:
``vae.decode(latents / scaling_factor)``, then [-1, 1] to [0, 255].

>>> vae = load_vae("my-sd15/vae")                                  # doctest: +SKIP
>>> decode(vae, latents).size                                      # latents (1, 4, 64, 64)
... # doctest: +SKIP
(512, 512)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from shapetrace.errors import InputShapeError, ModelLoadError

__all__ = ["decode", "find_vae", "load_vae"]

_WEIGHTS = "diffusion_pytorch_model.safetensors"


def find_vae(model: str | Path, vae: str | Path | None = None) -> Path | None:
    """The VAE folder for ``model``: ``vae`` when given (it must exist), else ``model/vae`` or,
    for a ``.../unet`` folder, its sibling ``vae``; None for presets and folders without one."""
    if vae is not None:
        folder = Path(vae).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(
                f"--vae {vae}: no such folder; pass a diffusers VAE folder (config.json + "
                f"{_WEIGHTS}) or a pipeline folder holding vae/"
            )
        return folder / "vae" if (folder / "vae").is_dir() else folder
    root = Path(model).expanduser()
    if not root.is_dir():
        return None  # a preset name: nothing to decode with
    for candidate in (root / "vae", root.parent / "vae" if root.name == "unet" else None):
        if candidate is not None and candidate.is_dir():
            return candidate
    return None


def load_vae(folder: str | Path, *, device: str | torch.device = "cpu") -> Any:
    """An ``AutoencoderKL`` from a local folder, checked first; never a pickle file."""
    from diffusers import AutoencoderKL

    path = Path(folder)
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(
            f"{config_file}: not a readable JSON config ({err}); a VAE folder holds config.json "
            f"and {_WEIGHTS}: write one with vae.save_pretrained(folder, safe_serialization=True)"
        ) from err
    name = config.get("_class_name", "AutoencoderKL") if isinstance(config, dict) else None
    if name != "AutoencoderKL":
        raise ModelLoadError(f"{config_file} describes a {name}, not an AutoencoderKL")
    if not (path / _WEIGHTS).is_file():
        found = sorted(p.name for p in path.iterdir() if p.is_file())
        raise ModelLoadError(
            f"no {_WEIGHTS} in {path} (found: {', '.join(found) or 'nothing'}); shapetrace "
            "reads safetensors only, never pickle files: convert with "
            "vae.save_pretrained(folder, safe_serialization=True)"
        )
    try:
        vae = AutoencoderKL.from_pretrained(path, use_safetensors=True, local_files_only=True)
    except Exception as err:  # diffusers raises OSError, ValueError, RuntimeError, ...
        raise ModelLoadError(
            f"diffusers could not load the VAE in {path}: {type(err).__name__}: {err}"
        ) from err
    return vae.to(device).eval()


def decode(vae: Any, latents: torch.Tensor) -> Image.Image:
    """The first image of ``latents`` (B, C, h, w) decoded to RGB, (W, H) = 8x the latent for
    SD's VAE."""
    channels = int(vae.config.latent_channels)
    if latents.dim() != 4 or latents.shape[1] != channels:
        raise InputShapeError(
            f"latents {tuple(latents.shape)} do not fit this VAE: it decodes (B, {channels}, h, w)"
        )
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    param = next(vae.parameters())
    with torch.no_grad():
        x = latents[:1].to(param.device, param.dtype) / scale
        sample = vae.decode(x).sample  # (1, 3, H, W) in [-1, 1]
    rgb = (sample[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0)  # (H, W, 3)
    return Image.fromarray((rgb.cpu().numpy() * 255).round().astype("uint8"))
