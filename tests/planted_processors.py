"""Planted bugs in diffusers attention processors, and correct hand-written ones.

:class:`HandProcessor` writes out, step by step, what diffusers' reference ``AttnProcessor``
does on every ``Attention`` configuration (spatial norm, (B, C, H, W) maps, group norm,
self- or cross-attention, ``norm_cross``, the key mask, residual, rescale);
:class:`HandAddedKVProcessor` does the same for added key/value projections. Each mutant
gets one step wrong, mostly a step only some configurations take. ``mutants.py`` says what
each is and where it shows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor


class HandProcessor:
    """diffusers' reference processor, written out as steps over (B, H, T, d) heads."""

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = self.spatial_norm(attn, hidden_states, temb)
        shape = hidden_states.shape
        if hidden_states.ndim == 4:
            hidden_states = self.to_tokens(hidden_states)  # (B, C, H, W) -> (B, HW, C)
        if attn.group_norm is not None:
            hidden_states = self.group_norm(attn, hidden_states)
        context = self.context(attn, hidden_states, encoder_hidden_states)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k, v = (self.split(attn, t) for t in (q, k, v))  # (B, H, T, d)
        mask = self.mask(attn, attention_mask, q.shape[0])
        out = attn.to_out[1](attn.to_out[0](self.merge(self.attend(attn, q, k, v, mask))))
        if len(shape) == 4:
            out = self.to_map(out, shape)
        return self.finish(attn, out, residual)

    def spatial_norm(self, attn: Any, hidden: Tensor, temb: Tensor | None) -> Tensor:
        out: Tensor = attn.spatial_norm(hidden, temb)
        return out

    def to_tokens(self, hidden: Tensor) -> Tensor:
        return hidden.flatten(2).transpose(1, 2)  # (B, HW, C)

    def to_map(self, out: Tensor, shape: torch.Size) -> Tensor:
        return out.transpose(1, 2).reshape(shape)  # (B, C, H, W)

    def group_norm(self, attn: Any, hidden: Tensor) -> Tensor:
        out: Tensor = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
        return out

    def context(self, attn: Any, hidden: Tensor, encoder: Tensor | None) -> Tensor:
        if encoder is None:
            return hidden  # self-attention: keys from the normed image tokens
        if attn.norm_cross is not None:
            out: Tensor = attn.norm_encoder_hidden_states(encoder)
            return out
        return encoder

    def split(self, attn: Any, t: Tensor) -> Tensor:
        b, n, inner = t.shape
        return t.view(b, n, attn.heads, inner // attn.heads).transpose(1, 2)

    def merge(self, t: Tensor) -> Tensor:
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def mask(self, attn: Any, mask: Tensor | None, batch: int) -> Tensor | None:
        """diffusers' additive (B, 1, M) mask folded per head, batch-major: (B, H, 1, M)."""
        if mask is None:
            return None
        return mask.repeat_interleave(attn.heads, dim=0).view(batch, attn.heads, 1, -1)

    def attend(self, attn: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        scores = q @ k.transpose(-2, -1) * attn.scale  # (B, H, N, M)
        if mask is not None:
            scores = scores + mask
        return self.softmax(scores) @ v

    def softmax(self, scores: Tensor) -> Tensor:
        return scores.softmax(dim=-1)

    def finish(self, attn: Any, out: Tensor, residual: Tensor) -> Tensor:
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class HandAddedKVProcessor(HandProcessor):
    """diffusers' added-KV processor written out: keys and values are [context, image]."""

    def __call__(  # type: ignore[override]
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        residual = hidden_states
        b, c = hidden_states.shape[:2]
        hidden = hidden_states.view(b, c, -1).transpose(1, 2)  # (B, HW, C)
        encoder = hidden if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross is not None:
            encoder = attn.norm_encoder_hidden_states(encoder)
        hidden = self.group_norm(attn, hidden)
        q = self.split(attn, attn.to_q(hidden))
        k, v = self.keys_values(attn, hidden, encoder)
        out = attn.to_out[1](attn.to_out[0](self.merge(self.attend(attn, q, k, v, None))))
        out = out.transpose(1, 2).reshape(residual.shape)
        return self.add_residual(out, residual)

    def keys_values(self, attn: Any, hidden: Tensor, encoder: Tensor) -> tuple[Tensor, Tensor]:
        k = self.split(attn, attn.add_k_proj(encoder))
        v = self.split(attn, attn.add_v_proj(encoder))
        if not attn.only_cross_attention:
            k = torch.cat([k, self.split(attn, attn.to_k(hidden))], dim=2)
            v = torch.cat([v, self.split(attn, attn.to_v(hidden))], dim=2)
        return k, v

    def add_residual(self, out: Tensor, residual: Tensor) -> Tensor:
        return out + residual


# -- configurations' steps --------------------------------------------------------------
class SelfKeysBeforeGroupNorm(HandProcessor):
    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:
        self._raw = hidden_states  # BUG: self-attention keys taken before the group norm
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def context(self, attn: Any, hidden: Tensor, encoder: Tensor | None) -> Tensor:
        if encoder is None:
            raw = self._raw
            return self.to_tokens(raw) if raw.ndim == 4 else raw
        return super().context(attn, hidden, encoder)


class ContextRequired(HandProcessor):
    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:
        # BUG: sizes read from the context, which self-attention does not pass
        self.keys = encoder_hidden_states.shape[1]  # type: ignore[union-attr]
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class MapFlattenedWithoutTranspose(HandProcessor):
    def to_tokens(self, hidden: Tensor) -> Tensor:
        b, c, h, w = hidden.shape
        return hidden.reshape(b, h * w, c)  # BUG: (B, C, HW) read as (B, HW, C)

    def to_map(self, out: Tensor, shape: torch.Size) -> Tensor:
        return out.reshape(shape)  # the same mistake undone, so the shape comes out right


class GroupNormSkipped(HandProcessor):
    def group_norm(self, attn: Any, hidden: Tensor) -> Tensor:
        return hidden  # BUG: attn.group_norm never applied


class SpatialNormIgnored(HandProcessor):
    def spatial_norm(self, attn: Any, hidden: Tensor, temb: Tensor | None) -> Tensor:
        return hidden  # BUG: takes temb, never applies attn.spatial_norm


class NormCrossSkipped(HandProcessor):
    def context(self, attn: Any, hidden: Tensor, encoder: Tensor | None) -> Tensor:
        return hidden if encoder is None else encoder  # BUG: attn.norm_cross never applied


class RescaleBeforeResidual(HandProcessor):
    def finish(self, attn: Any, out: Tensor, residual: Tensor) -> Tensor:
        out = out / attn.rescale_output_factor  # BUG: the residual must be rescaled too
        return out + residual if attn.residual_connection else out


class MaskRepeatedHeadMajor(HandProcessor):
    def mask(self, attn: Any, mask: Tensor | None, batch: int) -> Tensor | None:
        if mask is None:
            return None
        folded = mask.repeat(attn.heads, 1, 1)  # BUG: head-major, rows h*B + b
        return folded.view(batch, attn.heads, 1, -1)


class AddedKVImageKeysDropped(HandAddedKVProcessor):
    def keys_values(self, attn: Any, hidden: Tensor, encoder: Tensor) -> tuple[Tensor, Tensor]:
        k = self.split(attn, attn.add_k_proj(encoder))  # BUG: the image's own keys left out
        return k, self.split(attn, attn.add_v_proj(encoder))


class AddedKVResidualDropped(HandAddedKVProcessor):
    def add_residual(self, out: Tensor, residual: Tensor) -> Tensor:
        return out  # BUG: added-KV layers always add the residual


# -- bugs elsewhere -----------------------------------------------------------------------
class UnscaledProcessor(HandProcessor):
    """Forgets the 1/sqrt(head_dim)."""

    def attend(self, attn: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)  # BUG


class MaskIgnoringProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, dropping the attention mask on the floor."""

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None
    ):  # type: ignore[no-untyped-def]
        return super().__call__(
            attn, hidden_states, encoder_hidden_states, attention_mask=None, temb=temb
        )


class TrainingPathDropsMask(HandProcessor):
    def mask(self, attn: Any, mask: Tensor | None, batch: int) -> Tensor | None:
        if torch.is_grad_enabled():
            return None  # BUG: the training path forgets the mask
        return super().mask(attn, mask, batch)


class ValuesDetached(HandProcessor):
    def attend(self, attn: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return super().attend(attn, q, k, v.detach(), mask)  # BUG: no gradient to to_v


class ClampedScoresProcessor(HandProcessor):
    def softmax(self, scores: Tensor) -> Tensor:
        return scores.clamp(-50.0, 50.0).softmax(dim=-1)  # BUG: clamped "for stability"
