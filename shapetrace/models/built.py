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


def check_size(
    height: object, width: object, batch: object = 1, *, factor: int = 8, why: str = ""
) -> None:
    """Raise InputShapeError unless height and width are positive multiples of ``factor`` (the
    VAE's 8, times the patch size of a transformer) and batch >= 1.

    Example::

        >>> check_size(512, 768, 2)
        >>> check_size(500, 512)
        Traceback (most recent call last):
        shapetrace.errors.InputShapeError: height 500 is not divisible by 8; ...
    """
    for name, value in (("height", height), ("width", width)):
        v = _check_int(name, value)
        reason = why.format(name=name) if why else f"SD latents are {name}/{factor}"
        if v <= 0:
            raise InputShapeError(
                f"{name} {v} must be positive; {reason}, so use a positive multiple of "
                f"{factor}, e.g. 512"
            )
        if v % factor:
            low, high = v - v % factor, v - v % factor + factor
            fix = f"use {low} or {high}" if low > 0 else f"use {high}"
            raise InputShapeError(f"{name} {v} is not divisible by {factor}; {reason} — {fix}")
    b = _check_int("batch", batch)
    if b < 1:
        raise InputShapeError(
            f"batch {b} must be >= 1; use 1, or 2 for classifier-free guidance (uncond + cond)"
        )


@dataclass
class BuiltModel:
    """A model ready to trace: the module and the facts needed to feed it.

    ``family`` says what its forward takes: ``"unet"`` (a diffusers
    ``UNet2DConditionModel``: sample, timestep, ``encoder_hidden_states``), ``"sd3"``,
    ``"flux"``, ``"pixart"`` (diffusers transformers), ``"text"`` (a CLIP text encoder:
    input ids) or ``"reference"`` (``ReferenceModel``: x, t, tokens). ``latent_channels`` is
    what the first input carries per latent pixel (per packed patch for Flux); ``patch`` the
    transformer's patch size (Flux packs 2x2), so image sizes must be multiples of
    ``vae_scale_factor * patch``.

    Example::

        >>> model = build_model("sd15")                       # on meta, no weights
        >>> args, kwargs = model.inputs(512, 768, batch=2)
        >>> args[0].shape, kwargs["encoder_hidden_states"].shape
        (torch.Size([2, 4, 64, 96]), torch.Size([2, 77, 768]))
    """

    module: nn.Module
    name: str
    family: Literal["unet", "sd3", "flux", "pixart", "text", "reference"]
    context_dim: int
    latent_channels: int
    config: dict[str, Any] = field(default_factory=dict)
    weights: str = "meta"
    context_tokens: int = 77
    vae_scale_factor: int = 8
    patch: int = 1
    native: tuple[int, int] = (512, 512)
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

    @property
    def size_factor(self) -> int:
        """Image sizes must be multiples of this: the VAE's factor times the patch size."""
        return self.vae_scale_factor * self.patch

    def num_parameters(self) -> int:
        """How many parameters the module holds (works on meta too)."""
        return sum(p.numel() for p in self.module.parameters())

    def check_size(self, height: int, width: int, batch: int = 1) -> None:
        """InputShapeError unless the size fits this model (see ``size_factor``)."""
        if self.family == "text":  # a text encoder takes no image size; the batch still counts
            check_size(self.size_factor, self.size_factor, batch, factor=self.size_factor)
            return
        why = "" if self.patch == 1 else (
            f"the VAE divides the {{name}} by {self.vae_scale_factor} and the model's "
            f"{self.patch}x{self.patch} patches divide the latent by {self.patch}"
        )
        check_size(height, width, batch, factor=self.size_factor, why=why)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The latent grid (h, w) = (height/8, width/8) of an image size, checked first.

        Example::

            >>> build_model("sd15").latent_size(512, 768)
            (64, 96)
        """
        self.check_size(height, width)
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The grid of image tokens the denoiser's attention sees at its first level: the
        latent for a UNet, the latent divided by the patch size for a transformer."""
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        return h // self.patch, w // self.patch

    def grids(self, height: int, width: int) -> list[tuple[int, int]]:
        """Token grids these inputs vouch for where the model cannot show them (Flux's packed
        latent on ``meta``, whose position ids hold no values); pass them to ``trace``."""
        return [self.token_grid(height, width)] if self.family == "flux" else []

    def inputs(self, height: int, width: int, batch: int = 1, *, seed: int = 0) -> Args:
        """(args, kwargs) for one forward at this image size, on the model's device and dtype.

        UNet: ``(sample (B, 4, h, w), timestep (B,))``, ``{"encoder_hidden_states":
        (B, 77, context_dim)}`` (plus SDXL's ``added_cond_kwargs`` when the config asks);
        SD3, Flux and PixArt: keyword arguments (see ``shapetrace.models._inputs``); text:
        ``(input_ids (B, 77),)``; reference: ``(x (B, C, h, w), t (B,), tokens (B, 77))``.
        Values come from a CPU ``torch.Generator`` seeded with ``seed``; on meta the tensors
        are empty.

        Example::

            >>> args, kwargs = build_model("reference").inputs(256, 256)
            >>> [tuple(a.shape) for a in args]
            [(1, 320, 32, 32), (1,), (1, 77)]
        """
        from shapetrace.models._inputs import make_inputs

        self.check_size(height, width, batch)
        return make_inputs(self, height, width, batch, seed)

    def run(self, height: int, width: int, batch: int = 1, *, seed: int = 0) -> Tensor:
        """One forward without gradients on :meth:`inputs`; the output tensor.

        Example::

            >>> build_model("sd15").run(512, 512).shape
            torch.Size([1, 4, 64, 64])
        """
        args, kwargs = self.inputs(height, width, batch, seed=seed)
        with torch.no_grad():
            out = self.module(*args, **kwargs)
        for attr in ("sample", "last_hidden_state"):
            if hasattr(out, attr):
                return getattr(out, attr)
        return out[0] if isinstance(out, tuple) else out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module itself."""
        return self.module(*args, **kwargs)
