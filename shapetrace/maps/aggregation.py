"""Aggregating stored maps the way prompt-to-prompt and Break-a-Scene do.

Prompt-to-prompt's ``aggregate_attention(res, from_where, is_cross, select)`` takes every stored
map whose query count equals res**2, reshapes (B*H, res*res, 77) to (B, H, res, res, 77), picks
batch row ``select`` and averages over heads and layers (the maps being averages over steps).
Here the maps are found by the layer's (h, w), never by sqrt(N), so non-square sizes work, and
the average over heads, layers and steps comes from running sums:

>>> maps = aggregate(store, 16, ("up", "down"), True, select=0)   # doctest: +SKIP
>>> maps.shape, maps.sum(-1).mean().item()                        # doctest: +SKIP
(torch.Size([16, 16, 77]), 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps.store import AttentionStore, Resolution, _as_res

__all__ = [
    "aggregate",
    "break_a_scene_aggregate",
    "break_a_scene_loss",
    "default_resolution",
    "nearest_resolution",
]


def aggregate(
    store: AttentionStore,
    res: int | Resolution,
    from_where: Sequence[str] = ("up", "down"),
    is_cross: bool = True,
    select: int = 0,
    *,
    image: int = 0,
    branch: str | None = None,
) -> torch.Tensor:
    """Mean map over heads, layers and steps at one resolution: (h, w, M).

    ``res`` is an int side or (h, w). ``select`` is the prompt index: under guidance it picks
    the conditional row of prompt ``select`` (``image`` picks among images per prompt,
    ``branch="uncond"`` the unconditional row when the store kept it). A capture error kept
    by the store is raised here.

    >>> aggregate(store, (12, 16), select=0).shape                    # doctest: +SKIP
    torch.Size([12, 16, 77])
    """
    store.check()
    h, w = _as_res(res)
    kind = "cross" if is_cross else "self"
    unknown = [p for p in from_where if p not in ("down", "mid", "up")]
    if unknown:
        raise InputShapeError(f"from_where takes 'down', 'mid', 'up'; got {unknown}")
    pos = store.row_position(select, image=image, branch=branch)
    total: torch.Tensor | None = None
    count = 0
    for place in from_where:
        entry = store.entries.get((place, kind, (h, w)))
        if entry is None:
            continue
        part = entry.total[pos]  # (h*w, M)
        total = part.clone() if total is None else total + part
        count += entry.count
    if total is None:
        have = ", ".join(
            f"{place} {k}: " + " ".join(f"{a}x{b}" for a, b in sizes)
            for (place, k), sizes in store.available().items()
        )
        raise ShapeTraceError(
            f"no {kind}-attention maps at {h}x{w} in {tuple(from_where)}; stored: "
            f"{have or 'nothing (did the traced forward call any wanted layer?)'}"
        )
    return (total / count).reshape(h, w, -1)


def nearest_resolution(
    sizes: Iterable[Resolution], latent: tuple[int, int] | None = None
) -> Resolution:
    """The size nearest to latent/4 (16x16 for SD 1.5 at 512, 24x24 at 768), as LEDITS++
    picks; with no ``latent``, the size nearest 16x16. Distance is in log-area, ties go to
    the larger map.

    >>> nearest_resolution([(64, 64), (32, 32), (16, 16), (8, 8)], latent=(64, 64))
    (16, 16)
    """
    have = sorted({(int(h), int(w)) for h, w in sizes}, reverse=True)
    if not have:
        raise ShapeTraceError("no map resolutions to choose from")
    th, tw = (latent[0] / 4, latent[1] / 4) if latent is not None else (16.0, 16.0)
    target = math.log(max(th * tw, 1e-9))
    return min(have, key=lambda r: abs(math.log(r[0] * r[1]) - target))


def default_resolution(
    store: AttentionStore,
    latent: tuple[int, int] | None = None,
    from_where: Sequence[str] = ("up", "down"),
    is_cross: bool = True,
) -> Resolution:
    """``nearest_resolution`` among the sizes the store holds in ``from_where``."""
    kind = "cross" if is_cross else "self"
    sizes = [res for (place, k, res) in store.entries if k == kind and place in from_where]
    if not sizes:
        raise ShapeTraceError(
            f"no {kind}-attention maps stored in {tuple(from_where)}; nothing to choose from"
        )
    return nearest_resolution(sizes, latent)


def break_a_scene_aggregate(
    store: AttentionStore,
    token_indices: Sequence[int],
    *,
    select: int = 0,
    res: int | Resolution = 16,
) -> torch.Tensor:
    """Break-a-Scene's maps: P2P aggregate at 16x16 from up and down, one map per token,
    each divided by its max. Returns (T, 16, 16).

    >>> break_a_scene_aggregate(store, [2, 6]).shape                 # doctest: +SKIP
    torch.Size([2, 16, 16])
    """
    agg = aggregate(store, res, ("up", "down"), True, select)
    m = agg.shape[-1]
    bad = [i for i in token_indices if not 0 <= i < m]
    if bad:
        raise InputShapeError(f"token indices {bad} are outside the {m} context tokens")
    maps = agg[..., list(token_indices)].permute(2, 0, 1)  # (T, h, w)
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / peak[:, None, None]


def break_a_scene_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Break-a-Scene's attention loss: sum over tokens of MSE(mask at the maps' size, map).

    ``maps`` (T, h, w) from ``break_a_scene_aggregate``; ``masks`` (T, H, W) or (T, 1, H, W)
    in {0, 1}, resized to (h, w) with nearest interpolation as ``F.interpolate`` does by default.
    """
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.dim() != 4 or masks.shape[0] != maps.shape[0] or maps.dim() != 3:
        raise InputShapeError(
            f"maps must be (T, h, w) and masks (T, H, W) or (T, 1, H, W) with the same T; "
            f"got maps {tuple(maps.shape)}, masks {tuple(masks.shape)}"
        )
    small = F.interpolate(masks.float(), size=tuple(maps.shape[-2:]))[:, 0]  # (T, h, w)
    loss = maps.new_zeros(())
    for t in range(maps.shape[0]):
        loss = loss + F.mse_loss(small[t], maps[t].float(), reduction="mean")
    return loss
