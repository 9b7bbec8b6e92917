"""Seed 000's UNet pieces: a sinusoidal timestep embedding, a time-conditioned ``ResBlock`` and
``CrossAttnResBlock``, which flattens a feature map into tokens for cross-attention and back."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from shapetrace.errors import InputShapeError
from shapetrace.reference.attention import CrossAttention

__all__ = ["CrossAttnResBlock", "ResBlock", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of timesteps, ``[cos(t f_i), sin(t f_i)]`` with geometric f_i.

    ``t`` is (B,) (a 0-d tensor is treated as batch 1); the result is float32 (B, dim), on
    ``t``'s device. An odd ``dim`` gets one zero column at the end.

    Example::

        >>> timestep_embedding(torch.tensor([0, 500]), 320).shape
        torch.Size([2, 320])
    """
    if dim < 1:
        raise InputShapeError(f"timestep_embedding: dim {dim} must be >= 1, e.g. 320")
    if t.dim() > 1:
        raise InputShapeError(
            f"timestep_embedding: t has shape {tuple(t.shape)}, expected (B,); "
            "flatten it with t.reshape(-1)"
        )
    t = t.reshape(-1).float()  # (B,)
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / max(half, 1))  # (half,)
    args = t[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))  # (B, dim)
    return emb


def _groups(channels: int, preferred: int = 32) -> int:
    """The largest GroupNorm group count <= preferred that divides channels."""
    return next(g for g in range(min(preferred, channels), 0, -1) if channels % g == 0)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, plus a projection of the time embedding, then
    GroupNorm -> SiLU -> conv3x3, added to a skip (1x1 conv when the channel counts differ).

    Example::

        >>> block = ResBlock(32, 64, time_emb_dim=128)
        >>> block(torch.randn(2, 32, 24, 40), torch.randn(2, 128)).shape
        torch.Size([2, 64, 24, 40])
    """

    def __init__(self, in_ch: int, out_ch: int, time_emb_dim: int) -> None:
        super().__init__()
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.time_emb_dim = time_emb_dim
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(time_emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.act = nn.SiLU()
        self.skip: nn.Module = (
            nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, kernel_size=1)
        )

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        """x (B, in_ch, H, W), t_emb (B, time_emb_dim) -> (B, out_ch, H, W)."""
        where = f"ResBlock(in_ch={self.in_ch}, out_ch={self.out_ch})"
        if x.dim() != 4 or x.shape[1] != self.in_ch:
            raise InputShapeError(
                f"{where}: x has shape {tuple(x.shape)}, expected (B, {self.in_ch}, H, W)"
            )
        if t_emb.dim() != 2 or t_emb.shape[1] != self.time_emb_dim or t_emb.shape[0] != x.shape[0]:
            raise InputShapeError(
                f"{where}: t_emb has shape {tuple(t_emb.shape)}, expected "
                f"({x.shape[0]}, {self.time_emb_dim}) to match x {tuple(x.shape)}"
            )
        h = self.conv1(self.act(self.norm1(x)))  # (B, out_ch, H, W)
        h = h + self.time_proj(self.act(t_emb))[:, :, None, None]  # broadcast over H, W
        h = self.conv2(self.act(self.norm2(h)))  # (B, out_ch, H, W)
        out: Tensor = h + self.skip(x)
        return out


class CrossAttnResBlock(nn.Module):
    """Seed 000's residual block with cross-attention: ``ResBlock``, then the map flattened to
    tokens (B, C, H, W) -> (B, HW, C) with ``view`` + ``transpose``, attended to the context,
    restored to (B, C, H, W) and added back.

    H and W come from the tensor, never from sqrt(HW), so non-square maps work. Seed 000
    declared ``GroupNorm(8, channels)`` but never used it; here it normalizes the tokens
    before attention (as SD's transformer blocks do).

    Example::

        >>> block = CrossAttnResBlock(64, time_emb_dim=128, context_dim=96, num_heads=8)
        >>> x, t, ctx = torch.randn(2, 64, 24, 40), torch.randn(2, 128), torch.randn(2, 77, 96)
        >>> block(x, t, ctx).shape
        torch.Size([2, 64, 24, 40])
    """

    def __init__(
        self, channels: int, time_emb_dim: int, context_dim: int, num_heads: int = 8
    ) -> None:
        super().__init__()
        self.channels = channels
        self.res = ResBlock(channels, channels, time_emb_dim)
        self.cross_attn = CrossAttention(channels, context_dim, num_heads)
        self.norm = nn.GroupNorm(_groups(channels, preferred=8), channels)

    @property
    def heads(self) -> int:
        """The cross-attention's head count."""
        return self.cross_attn.num_heads

    def forward(self, x: Tensor, t_emb: Tensor, context: Tensor) -> Tensor:
        """x (B, C, H, W), t_emb (B, time_emb_dim), context (B, M, context_dim) -> (B, C, H, W)."""
        h = self.res(x, t_emb)  # (B, C, H, W)
        B, C, H, W = h.shape
        h_seq = self.norm(h).view(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        attn_out = self.cross_attn(h_seq, context)  # (B, HW, C)
        attn_out = attn_out.transpose(1, 2).view(B, C, H, W)  # (B, C, H, W)
        out: Tensor = h + attn_out
        return out
