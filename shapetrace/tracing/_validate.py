"""Checks of what an attention layer, or a conditional UNet, is given, before torch fails deep
inside it. Each refusal names the layer, the shapes and the fix."""

from __future__ import annotations

from typing import Any

import torch

from shapetrace.errors import InputShapeError
from shapetrace.tracing._discover import LayerInfo

__all__ = ["validate_call", "validate_unet"]

_QUERY = ("to_q", "q_proj", "q", "to_qkv", "qkv")
_KEYS = ("to_k", "k_proj", "k", "add_k_proj", "to_kv", "to_k_custom_diffusion")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _autocast(t: torch.Tensor) -> bool:
    try:
        return bool(torch.is_autocast_enabled(t.device.type))
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return False


def _same_device_and_dtype(where: str, what: str, t: torch.Tensor, weight: torch.Tensor) -> None:
    """``t`` must sit on the weight's device (meta weights take anything) with its dtype,
    unless autocast decides the dtype each op runs in."""
    if weight.device.type != "meta" and t.device != weight.device:
        raise InputShapeError(
            f"{where}: {what} {_shape(t)} is on {t.device} but the weights are on "
            f"{weight.device}; move both to one device (tensor.to({str(weight.device)!r}))."
        )
    if t.dtype != weight.dtype and t.is_floating_point() and not _autocast(t):
        raise InputShapeError(
            f"{where}: {what} {_shape(t)} is {t.dtype} but the weights are {weight.dtype}; "
            f"cast it with .to({weight.dtype}), the model with .to({t.dtype}), or run under "
            "torch.autocast."
        )


def validate_call(info: LayerInfo, x: torch.Tensor, context: Any) -> None:
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
    query = info.linear(*_QUERY)
    if query:
        name, proj = query[0]
        width = x.shape[-1] if x.dim() == 3 else x.shape[1]
        if width != proj.in_features:
            raise InputShapeError(
                f"{where} got input {_shape(x)} with width {width}, but {name} takes "
                f"{proj.in_features} channels; pass features of width {proj.in_features}."
            )
        _same_device_and_dtype(where, "input", x, proj.weight)
    text = context[0] if isinstance(context, tuple) and context else context
    if isinstance(text, torch.Tensor) and text is not x:
        _validate_context(where, info, x, text)


def _validate_context(where: str, info: LayerInfo, x: torch.Tensor, context: torch.Tensor) -> None:
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
    keys = info.linear(*_KEYS)
    if keys and all(k.in_features != context.shape[-1] for _n, k in keys):
        takes = " or ".join(f"{n} takes {k.in_features}" for n, k in keys)
        raise InputShapeError(
            f"{where} got context {_shape(context)} of width {context.shape[-1]}, but {takes}: "
            f"this model expects (B, M, {keys[0][1].in_features}) text embeddings (SD 1.5: "
            "CLIP ViT-L/14, 768; SD 2.x: 1024; SDXL: 2048). Use the text encoder that matches "
            "the model."
        )
    matching = [k for _n, k in keys if k.in_features == context.shape[-1]]
    if matching:
        _same_device_and_dtype(where, "context", context, matching[0].weight)


def _unet_facts(model: torch.nn.Module) -> tuple[int, int | None, dict[str, Any]] | None:
    """(in_channels, context width or None, config) of a diffusers-style conditional UNet."""
    config = getattr(model, "config", None)
    if config is None or getattr(model, "conv_in", None) is None:
        return None
    try:
        in_channels = int(config["in_channels"])
        cross = config["cross_attention_dim"]
    except (KeyError, TypeError, ValueError):
        return None
    encoder_hid = config.get("encoder_hid_dim") if hasattr(config, "get") else None
    if isinstance(encoder_hid, int) and config.get("encoder_hid_dim_type") == "text_proj":
        cross = encoder_hid  # the UNet projects text of this width to cross_attention_dim
    return in_channels, cross if isinstance(cross, int) else None, dict(config)


def validate_unet(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The UNet's own inputs, checked before its first conv: latents, text embeddings and the
    added conditions SDXL-style UNets require."""
    facts = _unet_facts(model)
    if facts is None:
        return
    in_channels, cross, config = facts
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
    batch_ok = context.dim() == 3 and context.shape[0] == sample.shape[0]
    if not batch_ok or (cross is not None and context.shape[-1] != cross):
        raise InputShapeError(
            f"{where} got encoder_hidden_states {_shape(context)} for latents "
            f"{_shape(sample)}; it takes ({sample.shape[0]}, M, {cross}) — the same batch as "
            f"the latents and width {cross} (SD 1.5: CLIP ViT-L/14 gives (B, 77, 768))."
        )
    added = kwargs.get("added_cond_kwargs")
    if config.get("addition_embed_type") == "text_time" and not (
        isinstance(added, dict) and {"text_embeds", "time_ids"} <= added.keys()
    ):
        raise InputShapeError(
            f"{where} needs added_cond_kwargs={{'text_embeds': (B, pooled), 'time_ids': "
            "(B, 6)}} (SDXL's pooled text embedding and size/crop ids); got "
            f"{sorted(added) if isinstance(added, dict) else added!r}."
        )
