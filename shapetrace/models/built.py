"""``BuiltModel``: a built module plus what it takes to call it at a given image size."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from shapetrace.errors import InputShapeError

__all__ = ["BuiltModel", "check_size"]

Args = tuple[tuple[Tensor, ...], dict[str, Any]]


def _check_int(name: str, value: object) -> int:
    """value as an int, or InputShapeError if it is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        example = "1" if name == "batch" else "512"
        raise InputShapeError(
            f"{name} must be a whole number, got {value!r} ({type(value).__name__}); "
            f"pass an int, e.g. {name}={example}"
        )
    return int(value)


def check_size(height: object, width: object, batch: object = 1, *, factor: int = 8) -> None:
    """Raise InputShapeError unless height and width are positive multiples of ``factor`` (the
    VAE's 8) and batch >= 1.

    Example::

        >>> check_size(512, 768, 2)
        >>> check_size(500, 512)
        Traceback (most recent call last):
        shapetrace.errors.InputShapeError: height 500 is not divisible by 8; ...
    """
    for name, value in (("height", height), ("width", width)):
        v = _check_int(name, value)
        if v <= 0:
            raise InputShapeError(
                f"{name} {v} must be positive; SD latents are {name}/{factor}, so use a "
                f"positive multiple of {factor}, e.g. 512"
            )
        if v % factor:
            low, high = v - v % factor, v - v % factor + factor
            fix = f"use {low} or {high}" if low > 0 else f"use {high}"
            raise InputShapeError(
                f"{name} {v} is not divisible by {factor}; SD latents are {name}/{factor} — {fix}"
            )
    b = _check_int("batch", batch)
    if b < 1:
        raise InputShapeError(
            f"batch {b} must be >= 1; use 1, or 2 for classifier-free guidance (uncond + cond)"
        )


@dataclass
class BuiltModel:
    """A model ready to trace: the module and the facts needed to feed it.

    ``family`` is ``"unet"`` (a diffusers ``UNet2DConditionModel``: sample, timestep,
    ``encoder_hidden_states``) or ``"reference"`` (``ReferenceModel``: x, t, tokens).
    ``latent_channels`` is what the first input carries per pixel of the latent grid.

    Example::

        >>> model = build_model("sd15")                       # on meta, no weights
        >>> args, kwargs = model.inputs(512, 768, batch=2)
        >>> args[0].shape, kwargs["encoder_hidden_states"].shape
        (torch.Size([2, 4, 64, 96]), torch.Size([2, 77, 768]))
    """

    module: nn.Module
    name: str
    family: Literal["unet", "reference"]
    context_dim: int
    latent_channels: int
    config: dict[str, Any] = field(default_factory=dict)
    weights: str = "meta"
    context_tokens: int = 77
    vae_scale_factor: int = 8
    vocab_size: int = 49408
    source: Path | None = None
    description: str = ""

    @property
    def device(self) -> torch.device:
        """Where the module's parameters live (``meta`` for shape-only models)."""
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the module's parameters."""
        for p in self.module.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
        return torch.float32

    def num_parameters(self) -> int:
        """How many parameters the module holds (works on meta too)."""
        return sum(p.numel() for p in self.module.parameters())

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The latent grid (h, w) = (height/8, width/8) of an image size, checked first.

        Example::

            >>> build_model("sd15").latent_size(512, 768)
            (64, 96)
        """
        check_size(height, width, 1, factor=self.vae_scale_factor)
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def inputs(self, height: int, width: int, batch: int = 1, *, seed: int = 0) -> Args:
        """(args, kwargs) for one forward at this image size, on the model's device and dtype.

        UNet: ``(sample (B, 4, h, w), timestep (B,))``, ``{"encoder_hidden_states":
        (B, 77, context_dim)}`` (plus SDXL's ``added_cond_kwargs`` when the config asks).
        Reference: ``(x (B, C, h, w), t (B,), tokens (B, 77))``, ``{}``. Values come from a
        CPU ``torch.Generator`` seeded with ``seed``; on meta the tensors are empty.

        Example::

            >>> args, kwargs = build_model("reference").inputs(256, 256)
            >>> [tuple(a.shape) for a in args]
            [(1, 320, 32, 32), (1,), (1, 77)]
        """
        check_size(height, width, batch, factor=self.vae_scale_factor)
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        make = _Maker(self.device, self.dtype, seed)
        B, M = batch, self.context_tokens
        if self.family == "reference":
            x = make.randn(B, self.latent_channels, h, w)
            t = make.randint(1000, B)
            tokens = make.randint(self.vocab_size, B, M)
            return (x, t, tokens), {}
        sample = make.randn(B, self.latent_channels, h, w)
        timestep = make.randint(int(self.config.get("num_train_timesteps", 1000)), B)
        kwargs: dict[str, Any] = {"encoder_hidden_states": make.randn(B, M, self.context_dim)}
        if self.config.get("addition_embed_type") == "text_time":
            # SDXL: pooled text embeddings plus 6 size/crop ids per row.
            time_dim = int(self.config["addition_time_embed_dim"])
            pooled = int(self.config["projection_class_embeddings_input_dim"]) - 6 * time_dim
            ids = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": make.randn(B, pooled),
                "time_ids": make.place(ids.expand(B, 6).clone()),
            }
        return (sample, timestep), kwargs

    def run(self, height: int, width: int, batch: int = 1, *, seed: int = 0) -> Tensor:
        """One forward without gradients on :meth:`inputs`; the output tensor.

        Example::

            >>> build_model("sd15").run(512, 512).shape
            torch.Size([1, 4, 64, 64])
        """
        args, kwargs = self.inputs(height, width, batch, seed=seed)
        if self.family == "unet":
            kwargs = {**kwargs, "return_dict": False}
        with torch.no_grad():
            out = self.module(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module itself."""
        return self.module(*args, **kwargs)


class _Maker:
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

    def place(self, x: Tensor) -> Tensor:
        return x.to(device=self.device, dtype=self.dtype)
