"""Checks of what an attention layer is given, before torch fails deep inside it."""

from __future__ import annotations

import torch

from shapetrace.errors import InputShapeError
from shapetrace.trace._discover import LayerInfo

__all__ = ["validate_call"]


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


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
        weight = to_q.weight
        if weight.device.type != "meta" and x.device != weight.device:
            raise InputShapeError(
                f"{where}: input is on {x.device} but the layer's weights are on "
                f"{weight.device}; move both to one device (model.to(x.device))."
            )
        if x.dtype != weight.dtype:
            raise InputShapeError(
                f"{where}: input {_shape(x)} is {x.dtype} but the weights are {weight.dtype}; "
                f"cast the input with .to({weight.dtype}) or the model with .to(dtype)."
            )
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
        weight = to_k.weight
        if weight.device.type != "meta" and context.device != weight.device:
            raise InputShapeError(
                f"{where}: context is on {context.device} but the weights are on "
                f"{weight.device}; move the text embeddings with .to({weight.device})."
            )
        if context.dtype != weight.dtype:
            raise InputShapeError(
                f"{where}: context {_shape(context)} is {context.dtype} but the weights are "
                f"{weight.dtype}; cast it with .to({weight.dtype})."
            )
