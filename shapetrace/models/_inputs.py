"""What each family's forward takes for one image size: shapes from the config, values from a
seeded CPU generator (empty tensors on ``meta``).

At 1024x1024, batch 1:

- unet: sample (1, 4, 128, 128), timestep (1,), text (1, 77, D), plus SDXL's added conditions;
- sd3: latents (1, 16, 128, 128), text (1, 333, 4096), pooled (1, 2048), timestep (1,);
- flux: packed latents (1, 4096, 64), text (1, 512, 4096), pooled (1, 768), timestep and
  guidance (1,), img_ids (4096, 3) (row and column of each 2x2 patch), txt_ids (512, 3);
- pixart: latents (1, 4, 128, 128), text (1, 120, 4096) and its mask, timestep, resolution
  (1, 2) and aspect ratio (1, 1);
- text: input_ids (1, 77).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from shapetrace.models.built import BuiltModel

__all__ = ["Maker", "make_inputs"]

Args = tuple[tuple[Tensor, ...], dict[str, Any]]


class Maker:
    """Seeded tensors on CPU, moved to the model's device; empty ones on meta."""

    def __init__(self, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        self.device, self.dtype = device, dtype
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> Tensor:
        if self.device.type == "meta":
            return torch.empty(shape, device="meta", dtype=self.dtype)
        x = torch.randn(shape, generator=self.generator)
        return x.to(device=self.device, dtype=self.dtype)

    def randint(self, high: int, *shape: int) -> Tensor:
        if self.device.type == "meta":
            return torch.empty(shape, device="meta", dtype=torch.long)
        return torch.randint(0, high, shape, generator=self.generator).to(self.device)

    def rand(self, *shape: int) -> Tensor:
        if self.device.type == "meta":
            return torch.empty(shape, device="meta", dtype=self.dtype)
        return torch.rand(shape, generator=self.generator).to(self.device, self.dtype)

    def place(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        if self.device.type == "meta":
            return torch.empty(x.shape, device="meta", dtype=dtype or self.dtype)
        return x.to(device=self.device, dtype=dtype or self.dtype)


def _unet(m: BuiltModel, h: int, w: int, b: int, make: Maker) -> Args:
    sample = make.randn(b, m.latent_channels, h // m.vae_scale_factor, w // m.vae_scale_factor)
    timestep = make.randint(int(m.config.get("num_train_timesteps", 1000)), b)
    width = m.context_dim
    if m.config.get("encoder_hid_dim_type") == "text_proj" and m.config.get("encoder_hid_dim"):
        width = int(m.config["encoder_hid_dim"])  # the UNet projects this width itself
    kwargs: dict[str, Any] = {"encoder_hidden_states": make.randn(b, m.context_tokens, width)}
    if m.config.get("addition_embed_type") == "text_time":
        # SDXL: pooled text embeddings plus 6 size/crop ids per row.
        time_dim = int(m.config["addition_time_embed_dim"])
        pooled = int(m.config["projection_class_embeddings_input_dim"]) - 6 * time_dim
        ids = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": make.randn(b, pooled),
            "time_ids": make.place(ids.expand(b, 6).clone()),
        }
    return (sample, timestep), kwargs


def _sd3(m: BuiltModel, h: int, w: int, b: int, make: Maker) -> Args:
    f = m.vae_scale_factor
    kwargs = {
        "hidden_states": make.randn(b, m.latent_channels, h // f, w // f),
        "encoder_hidden_states": make.randn(
            b, m.context_tokens, int(m.config["joint_attention_dim"])
        ),
        "pooled_projections": make.randn(b, int(m.config["pooled_projection_dim"])),
        "timestep": make.rand(b) * 1000,
    }
    return (), kwargs


def flux_ids(rows: int, cols: int) -> Tensor:
    """(rows*cols, 3) position ids of packed latent patches: (0, row, column)."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3)


def _flux(m: BuiltModel, h: int, w: int, b: int, make: Maker) -> Args:
    rows, cols = m.token_grid(h, w)
    kwargs: dict[str, Any] = {
        "hidden_states": make.randn(b, rows * cols, m.latent_channels),
        "encoder_hidden_states": make.randn(
            b, m.context_tokens, int(m.config["joint_attention_dim"])
        ),
        "pooled_projections": make.randn(b, int(m.config["pooled_projection_dim"])),
        "timestep": make.rand(b),
        "img_ids": make.place(flux_ids(rows, cols)),
        "txt_ids": make.place(torch.zeros(m.context_tokens, 3)),
    }
    if m.config.get("guidance_embeds"):
        kwargs["guidance"] = make.place(torch.full((b,), 3.5))
    return (), kwargs


def _pixart(m: BuiltModel, h: int, w: int, b: int, make: Maker) -> Args:
    f = m.vae_scale_factor
    kwargs: dict[str, Any] = {
        "hidden_states": make.randn(b, m.latent_channels, h // f, w // f),
        "encoder_hidden_states": make.randn(b, m.context_tokens, int(m.config["caption_channels"])),
        "encoder_attention_mask": make.place(torch.ones(b, m.context_tokens)),
        "timestep": make.randint(1000, b),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    if getattr(m.module, "use_additional_conditions", False):
        kwargs["added_cond_kwargs"] = {
            "resolution": make.place(torch.tensor([[float(h), float(w)]]).expand(b, 2).clone()),
            "aspect_ratio": make.place(torch.tensor([[h / w]]).expand(b, 1).clone()),
        }
    return (), kwargs


def _text(m: BuiltModel, h: int, w: int, b: int, make: Maker) -> Args:
    return (make.randint(m.vocab_size, b, m.context_tokens),), {}


def _reference(m: BuiltModel, h: int, w: int, b: int, make: Maker) -> Args:
    f = m.vae_scale_factor
    x = make.randn(b, m.latent_channels, h // f, w // f)
    return (x, make.randint(1000, b), make.randint(m.vocab_size, b, m.context_tokens)), {}


_MAKERS: dict[str, Callable[[BuiltModel, int, int, int, Maker], Args]] = {
    "unet": _unet,
    "sd3": _sd3,
    "flux": _flux,
    "pixart": _pixart,
    "text": _text,
    "reference": _reference,
}


def make_inputs(model: BuiltModel, height: int, width: int, batch: int, seed: int) -> Args:
    """(args, kwargs) for one forward of ``model`` at height x width."""
    make = Maker(model.device, model.dtype, seed)
    return _MAKERS[model.family](model, height, width, batch, make)
