"""Model folders a new user might point shapetrace at, good and broken, made from the tiny UNet
(everything is written here; nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shapetrace.models import build_model, read_config

WEIGHTS = "diffusion_pytorch_model.safetensors"


def save_tiny(folder: Path, *, fill: float | None = None) -> Path:
    """The tiny UNet saved with safetensors; every weight set to ``fill`` if given."""
    module = build_model("tiny", device="cpu").module
    if fill is not None:
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(fill)
    module.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_text_encoder(folder: Path) -> Path:
    """The tiny CLIP text encoder (width 64) saved with safetensors."""
    from shapetrace.maps.text import build_text_encoder

    build_text_encoder("tiny").save_pretrained(folder, safe_serialization=True)
    return folder


def _config(tiny: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((tiny / "config.json").read_text())
    return config


def _with_config(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path, Path], None]:
    def make(tiny: Path, folder: Path) -> None:
        shutil.copytree(tiny, folder)
        config = edit(_config(tiny))
        (folder / "config.json").write_text(
            config if isinstance(config, str) else json.dumps(config)
        )

    return make


def _drop(*keys: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda c: {k: v for k, v in c.items() if k not in keys}


def _truncate(tiny: Path, folder: Path) -> None:
    shutil.copytree(tiny, folder)
    weights = folder / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _pickle_only(tiny: Path, folder: Path) -> None:
    shutil.copytree(tiny, folder)
    (folder / WEIGHTS).unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle you want to load")


def _no_weights(tiny: Path, folder: Path) -> None:
    shutil.copytree(tiny, folder)
    (folder / WEIGHTS).unlink()


#: Broken folders: name -> (how to make it from the tiny folder, words the refusal must hold).
BROKEN: dict[str, tuple[Callable[[Path, Path], None], tuple[str, ...]]] = {
    "config {}": (_with_config(lambda c: {}), ("in_channels is missing", "diffusers' defaults")),
    "key fields missing": (
        _with_config(_drop("block_out_channels", "cross_attention_dim")),
        ("block_out_channels is missing", "cross_attention_dim is missing"),
    ),
    "a CLIP text encoder's config": (
        _with_config(lambda c: read_config("sd15_text_encoder.json")),
        ("CLIPTextModel (a CLIP text encoder)", "not a UNet or transformer"),
    ),
    "a VAE's config": (
        _with_config(lambda c: {**c, "_class_name": "AutoencoderKL"}),
        ("AutoencoderKL (the VAE)",),
    ),
    "an unknown class": (
        _with_config(lambda c: {**c, "_class_name": "MyUNet"}),
        ("MyUNet (a class shapetrace cannot trace)",),
    ),
    "block_out_channels 'abc'": (
        _with_config(lambda c: {**c, "block_out_channels": "abc"}),
        ("block_out_channels must be a non-empty list of positive whole numbers, got 'abc'",),
    ),
    "cross_attention_dim -5": (
        _with_config(lambda c: {**c, "cross_attention_dim": -5}),
        ("cross_attention_dim must be a positive whole number", "got -5"),
    ),
    "attention_head_dim 0": (
        _with_config(lambda c: {**c, "attention_head_dim": 0}),
        ("attention_head_dim must be a positive whole number",),
    ),
    "heads that do not divide the channels": (
        _with_config(lambda c: {**c, "attention_head_dim": 5}),
        ("block_out_channels 32 is not divisible by attention_head_dim 5",),
    ),
    "norm groups that do not divide the channels": (
        _with_config(lambda c: {**c, "norm_num_groups": 7}),
        ("not divisible by norm_num_groups 7",),
    ),
    "two down blocks for four levels": (
        _with_config(lambda c: {**c, "down_block_types": c["down_block_types"][:2]}),
        ("down_block_types has 2 entries but block_out_channels has 4",),
    ),
    "an unknown block": (
        _with_config(lambda c: {**c, "down_block_types": ["FooBlock2D"] * 4}),
        ("down_block_types names unknown blocks 'FooBlock2D'",),
    ),
    "num_attention_heads set": (
        _with_config(lambda c: {**c, "num_attention_heads": 8}),
        ("num_attention_heads must be null",),
    ),
    "config not JSON": (_with_config(lambda c: "{not json"), ("is not valid JSON",)),
    "config a list": (_with_config(lambda c: "[1, 2]"), ("holds a list, not a JSON object",)),
    "SD 1.5's config beside tiny weights": (
        _with_config(lambda c: read_config("sd15_unet.json")),
        ("other shapes than config.json needs", "come from different models"),
    ),
    "weights cut off": (_truncate, ("is not a readable safetensors file",)),
    "a pickle only": (_pickle_only, ("safetensors only",)),
    "no weights": (_no_weights, ("no weights in",)),
}
