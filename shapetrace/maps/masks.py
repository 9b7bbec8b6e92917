"""LEDITS++ token masks: from aggregated cross-attention maps to a binary latent mask.

``shapetrace.maps.recipes.ledits_masks`` applies this to a store's current step.

As diffusers' ``LEditsPPPipelineStableDiffusion`` does it: take the maps of the edit prompt's
tokens (start-of-text, index 0, excluded: it takes most of the attention everywhere), sum them,
smooth with LEDITS's 3x3 Gaussian (reflect padding), keep the pixels at or above the
``threshold`` quantile, upsample (nearest) to the latent and repeat over its channels.

>>> maps = torch.rand(16, 16, 77).softmax(-1)
>>> token_mask(maps, 2, threshold=0.9, latent_size=(64, 64)).shape   # tokens 1 and 2
torch.Size([1, 4, 64, 64])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from shapetrace.errors import InputShapeError

__all__ = ["gaussian_kernel", "smooth", "token_mask"]


def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """LEDITS++'s smoothing kernel, (1, 1, size, size), summing to 1.

    It is diffusers' ``LeditsGaussianSmoothing`` as written: exp(-((x - mean) / (2 sigma))^2),
    which is a Gaussian of standard deviation sigma*sqrt(2), not sigma; kept for fidelity.
    """
    mean = (size - 1) / 2
    grid = torch.arange(size, dtype=torch.float32)
    g = 1 / (sigma * math.sqrt(2 * math.pi)) * torch.exp(-(((grid - mean) / (2 * sigma)) ** 2))
    kernel = g[:, None] * g[None, :]
    return (kernel / kernel.sum()).view(1, 1, size, size)


def smooth(maps: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by 1 and convolve with ``gaussian_kernel()``: (B, h, w) -> (B, h, w)."""
    if maps.dim() != 3:
        raise InputShapeError(f"smooth takes (B, h, w) maps, got {tuple(maps.shape)}")
    if min(maps.shape[-2:]) < 2:
        return maps  # reflect padding needs 2 pixels; a 1-pixel side has nothing to smooth
    padded = F.pad(maps.unsqueeze(1), (1, 1, 1, 1), mode="reflect")  # (B, 1, h+2, w+2)
    return F.conv2d(padded, gaussian_kernel().to(maps.dtype)).squeeze(1)


def token_mask(
    maps: torch.Tensor,
    tokens: int | Sequence[int],
    *,
    threshold: float = 0.9,
    latent_size: tuple[int, int] | None = None,
    channels: int = 4,
    smoothing: bool = True,
) -> torch.Tensor:
    """Binary mask where the summed maps of ``tokens`` reach their ``threshold`` quantile.

    Args:
        maps: aggregated maps (h, w, M) or (B, h, w, M).
        tokens: an int n means the edit prompt's first n tokens, indices 1..n (LEDITS++'s
            ``1 : 1 + num_edit_tokens``); a sequence gives token indices (0 is refused).
        threshold: quantile in [0, 1], LEDITS++'s ``edit_threshold`` (default 0.9).
        latent_size: (H, W) to upsample to (nearest); None keeps (h, w).
        channels: repeats over the latent's channels (4 for SD 1.5).
        smoothing: apply ``smooth`` before thresholding.

    Returns (B, channels, H, W) float of 0.0 and 1.0.
    """
    if maps.dim() == 3:
        maps = maps.unsqueeze(0)
    if maps.dim() != 4:
        raise InputShapeError(f"maps must be (h, w, M) or (B, h, w, M), got {tuple(maps.shape)}")
    m = maps.shape[-1]
    index = list(range(1, 1 + tokens)) if isinstance(tokens, int) else list(tokens)
    if not index:
        raise InputShapeError("no edit tokens given: pass n >= 1 or a list of token indices")
    if 0 in index:
        raise InputShapeError(
            "token index 0 is start-of-text, which takes most attention everywhere; LEDITS++ "
            "excludes it: start edit tokens at 1"
        )
    bad = [i for i in index if not 0 < i < m]
    if bad:
        raise InputShapeError(f"token indices {bad} are outside the {m} context tokens")
    if not 0.0 <= threshold <= 1.0:
        raise InputShapeError(f"threshold is a quantile in [0, 1], got {threshold}")
    summed = maps[..., index].sum(dim=-1).float()  # (B, h, w)
    if smoothing:
        summed = smooth(summed)
    cut = torch.quantile(summed.flatten(start_dim=1), threshold, dim=1)  # (B,)
    mask = torch.where(summed >= cut[:, None, None], 1.0, 0.0)  # (B, h, w)
    size = tuple(latent_size) if latent_size is not None else tuple(mask.shape[-2:])
    mask = F.interpolate(mask.unsqueeze(1), size=size)  # (B, 1, H, W), nearest
    return mask.repeat(1, channels, 1, 1)
