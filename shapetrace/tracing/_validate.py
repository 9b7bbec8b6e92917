"""Checks of what an attention layer is given, before torch fails deep inside it."""

from __future__ import annotations

import torch

from shapetrace.errors import InputShapeError
from shapetrace.tracing._discover import LayerInfo

__all__ = ["validate_call", "validate_unet"]


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _same_device_and_dtype(where: str, what: str, t: torch.Tensor, weight: torch.Tensor) -> None:
    """``t`` must sit on the weight's device (meta weights take anything) with its dtype."""
    if weight.device.type != "meta" and t.device != weight.device:
        raise InputShapeError(
            f"{where}: {what} {_shape(t)} is on {t.device} but the weights are on "
            f"{weight.device}; move both to one device (tensor.to({str(weight.device)!r}))."
        )
    if t.dtype != weight.dtype:
        raise InputShapeError(
            f"{where}: {what} {_shape(t)} is {t.dtype} but the weights are {weight.dtype}; "
            f"cast it with .to({weight.dtype}) or the model with .to({t.dtype})."
        )


def validate_call(info: LayerInfo, x: torch.Tensor, context: torch.Tensor | None) -> None:
    """Raise InputShapeError naming the layer, the shapes and the fix."""
    where = f"layer {info.name!r} ({info.module_type})"
    if x.dim() not in (3, 4):
        raise InputShapeError(
            f"{where} got input {_shape(x)} of rank {x.dim()}; it takes tokens (B, N, C) or a "
            "feature map (B, C, H, W). Add the batch axis or flatten the map with "
            "x.flatten(2).transpose(1, 2)."
        )
    if x.shape[0] == 0:
        raise InputShapeError(f"{where} got an empty batch: input {_shape(x)}. Use a batch >= 1.")
    to_q, to_k = info.to_q, info.to_k
    if to_q is not None:
        width = x.shape[-1] if x.dim() == 3 else x.shape[1]
        if width != to_q.in_features:
            raise InputShapeError(
                f"{where} got input {_shape(x)} with width {width}, but to_q takes "
                f"{to_q.in_features} channels; pass features of width {to_q.in_features}."
            )
        _same_device_and_dtype(where, "input", x, to_q.weight)
    if context is None or context is x:
        return
    if context.dim() != 3:
        raise InputShapeError(
            f"{where} got context {_shape(context)} of rank {context.dim()}; it takes text "
            "embeddings (B, M, D), e.g. (1, 77, 768) from CLIP. Add the batch axis."
        )
    if context.shape[0] != x.shape[0]:
        raise InputShapeError(
            f"{where}: input batch {x.shape[0]} ({_shape(x)}) differs from context batch "
            f"{context.shape[0]} ({_shape(context)}); under classifier-free guidance pass "
            "torch.cat([uncond, cond]) for both."
        )
    if context.shape[1] == 0:
        raise InputShapeError(f"{where} got a context with no tokens: {_shape(context)}.")
    if to_k is not None and context.shape[-1] != to_k.in_features:
        raise InputShapeError(
            f"{where} got context {_shape(context)} of width {context.shape[-1]}, but to_k "
            f"takes {to_k.in_features}: this model expects (B, M, {to_k.in_features}) text "
            "embeddings (SD 1.5: CLIP ViT-L/14, 768; SD 2.x: 1024). Use the text encoder that "
            "matches the model."
        )
    if to_k is not None:
        _same_device_and_dtype(where, "context", context, to_k.weight)


def _unet_config(model: torch.nn.Module) -> tuple[int, int] | None:
    """(in_channels, cross_attention_dim) of a diffusers-style conditional UNet, else None."""
    config = getattr(model, "config", None)
    conv_in = getattr(model, "conv_in", None)
    if config is None or conv_in is None:
        return None
    try:
        in_channels, cross = config["in_channels"], config["cross_attention_dim"]
    except (KeyError, TypeError):
        return None
    return (in_channels, cross) if isinstance(cross, int) else None


def validate_unet(
    model: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    """The UNet's own inputs, checked before its first conv: latents and text embeddings."""
    facts = _unet_config(model)
    if facts is None:
        return
    in_channels, cross = facts
    where = f"{type(model).__name__} (conv_in takes {in_channels} channels, context {cross})"
    sample = args[0] if args else kwargs.get("sample")
    context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
    if not isinstance(sample, torch.Tensor):
        raise InputShapeError(f"{where} got no latent tensor; call unet(latents, t, context).")
    if sample.dim() != 4:
        raise InputShapeError(
            f"{where} got latents {_shape(sample)} of rank {sample.dim()}; it takes "
            f"(B, {in_channels}, H/8, W/8), e.g. (1, {in_channels}, 64, 64) for 512x512."
        )
    if sample.shape[0] == 0:
        raise InputShapeError(f"{where} got an empty batch: latents {_shape(sample)}.")
    if sample.shape[1] != in_channels:
        raise InputShapeError(
            f"{where} got latents {_shape(sample)} with {sample.shape[1]} channels; it takes "
            f"{in_channels} (VAE latents), e.g. (1, {in_channels}, 64, 64)."
        )
    weight = getattr(model.conv_in, "weight")  # noqa: B009 - typed as Tensor | Module
    _same_device_and_dtype(where, "latents", sample, weight)
    if not isinstance(context, torch.Tensor):
        raise InputShapeError(
            f"{where} got no encoder_hidden_states; pass text embeddings (B, 77, {cross})."
        )
    if context.dim() != 3 or context.shape[-1] != cross or context.shape[0] != sample.shape[0]:
        raise InputShapeError(
            f"{where} got encoder_hidden_states {_shape(context)} for latents "
            f"{_shape(sample)}; it takes ({sample.shape[0]}, M, {cross}) — the same batch as "
            f"the latents and width {cross} (SD 1.5: CLIP ViT-L/14 gives (B, 77, 768))."
        )
