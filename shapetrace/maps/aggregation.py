"""Reading a store: prompt-to-prompt's aggregate, per-layer and per-head maps, grid choice.

Prompt-to-prompt's ``aggregate_attention(res, from_where, is_cross, select)`` takes every stored
map whose query count equals res**2, reshapes (B*H, res*res, 77) to (B, H, res, res, 77), picks
batch row ``select`` and averages over heads and layers (the maps being averages over steps).
Here the maps are found by the layer's (h, w), never by sqrt(N), so non-square sizes work, and
the average over heads, layers and the store's window comes from running sums:

>>> maps = aggregate(store, 16, ("up", "down"), True, select=0)   # doctest: +SKIP
>>> maps.shape, maps.sum(-1).mean().item()                        # doctest: +SKIP
(torch.Size([16, 16, 77]), 1.0)

Maps keep their autograd graph when the store was built with ``grad=True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from shapetrace.errors import ShapeTraceError
from shapetrace.maps._store_settings import ALL_PLACES, Resolution, as_res, check_names
from shapetrace.maps.store import AttentionStore, MapKey, MapSum

__all__ = [
    "aggregate",
    "default_resolution",
    "head_maps",
    "layer_maps",
    "nearest_resolution",
]


def _kinds(is_cross: bool) -> tuple[str, ...]:
    """A joint layer's stored block is image-query x text-key: cross-attention."""
    return ("cross", "joint") if is_cross else ("self",)


def _matching(
    store: AttentionStore, res: Resolution | None, from_where: Sequence[str], is_cross: bool
) -> list[tuple[MapKey, MapSum]]:
    """(key, entry) of every stored sum at ``res`` (any if None) in ``from_where``,
    in the order the store first saw them."""
    kinds = _kinds(is_cross)
    return [
        (key, entry)
        for key, entry in store.entries.items()
        if key.place in from_where
        and key.kind in kinds
        and (res is None or key.resolution == res)
    ]


def _nothing(store: AttentionStore, what: str, from_where: Sequence[str]) -> ShapeTraceError:
    have = ", ".join(
        f"{place} {k}: " + " ".join(f"{a}x{b}" for a, b in sizes)
        for (place, k), sizes in store.available().items()
    )
    return ShapeTraceError(
        f"no {what} in {tuple(from_where)}; stored: "
        f"{have or 'nothing (did the traced forward call any wanted layer?)'}"
    )


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
    """Mean map over heads, layers and the store's window at one grid: (h, w, M).

    ``res`` is an int side or (h, w). ``select`` is the prompt index: under guidance it picks
    the conditional row of prompt ``select`` (``image`` picks among images per prompt,
    ``branch="uncond"`` the unconditional row when the store kept it). A capture error kept
    by the store is raised here.

    >>> aggregate(store, (12, 16), select=0).shape                    # doctest: +SKIP
    torch.Size([12, 16, 77])
    """
    store.check()
    h, w = as_res(res)
    where = check_names("from_where", from_where, ALL_PLACES)
    pos = store.row_position(select, image=image, branch=branch)
    found = _matching(store, (h, w), where, is_cross)
    if not found:
        kind = "cross" if is_cross else "self"
        raise _nothing(store, f"{kind}-attention maps at {h}x{w}", where)
    total = torch.stack([entry.summed()[pos] for _, entry in found]).sum(dim=0)  # (h*w, M)
    count = sum(entry.count for _, entry in found)
    return (total / count).reshape(h, w, -1)


def layer_maps(
    store: AttentionStore,
    *,
    res: int | Resolution | None = None,
    from_where: Sequence[str] = ALL_PLACES,
    is_cross: bool = True,
    select: int = 0,
    image: int = 0,
    branch: str | None = None,
) -> dict[str, torch.Tensor]:
    """Each layer's map, mean over its heads and the window's calls: {name: (h, w, M)}, in call
    order. Needs a store built with ``detail="layer"`` or ``"head"``.

    >>> maps = layer_maps(store, res=16, from_where=("down", "up"))  # doctest: +SKIP
    >>> list(maps)[:2], maps["up_blocks.1.attentions.0.transformer_blocks.0.attn2"].shape
    ... # doctest: +SKIP
    (['down_blocks.2.attentions.0...attn2', ...], torch.Size([16, 16, 77]))
    """
    _needs_detail(store, ("layer", "head"), "layer_maps")
    store.check()
    where = check_names("from_where", from_where, ALL_PLACES)
    grid = None if res is None else as_res(res)
    pos = store.row_position(select, image=image, branch=branch)
    found = _matching(store, grid, where, is_cross)
    if not found:
        raise _nothing(store, "layer maps" + ("" if grid is None else f" at {grid}"), where)
    return {
        key.layer: (entry.summed()[pos] / max(entry.count, 1)).reshape(*key.resolution, -1)
        for key, entry in found
    }


def head_maps(
    store: AttentionStore,
    layer: str,
    *,
    select: int = 0,
    image: int = 0,
    branch: str | None = None,
) -> torch.Tensor:
    """One layer's maps per head, each the mean over the window's calls: (H, h, w, M).
    Needs a store built with ``detail="head"``.

    >>> head_maps(store, "up_blocks.1.attentions.0.transformer_blocks.0.attn2").shape
    ... # doctest: +SKIP
    torch.Size([8, 16, 16, 77])
    """
    _needs_detail(store, ("head",), "head_maps")
    store.check()
    pos = store.row_position(select, image=image, branch=branch)
    for key, entry in store.entries.items():
        if key.layer == layer:
            h, w = key.resolution
            per_head = entry.total[pos] / max(entry.calls, 1)  # (H, h*w, M)
            return per_head.reshape(per_head.shape[0], h, w, -1)
    names = sorted({k.layer for k in store.entries})
    raise ShapeTraceError(
        f"no maps of layer {layer!r} in the store; it holds {len(names)} layers"
        + (f", e.g. {names[0]!r}" if names else "")
    )


def _needs_detail(store: AttentionStore, details: tuple[str, ...], what: str) -> None:
    if store.detail not in details:
        raise ShapeTraceError(
            f"{what} needs a store that keeps layers apart (detail={details[0]!r}); this one "
            f"has detail={store.detail!r}: build it with AttentionStore(detail={details[0]!r})"
        )


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
    kinds = _kinds(is_cross)
    sizes = [k.resolution for k in store.entries if k.kind in kinds and k.place in from_where]
    if not sizes:
        kind = "cross" if is_cross else "self"
        raise ShapeTraceError(
            f"no {kind}-attention maps stored in {tuple(from_where)}; nothing to choose from"
        )
    return nearest_resolution(sizes, latent)
