"""LEDITS++: masks from the current step's cross maps, at the latent size the store saw.

As diffusers' ``LEditsPPPipelineStableDiffusion`` (``use_cross_attn_mask``) does it: the batch
is [uncond, edit 1, ..., edit P] with one unconditional row shared by every edit; the maps of
the current step at (int(h / 4), int(w / 4)) of the latent, from up and down, are averaged over
heads and layers per edit row; then ``token_mask``: start-of-text dropped, edit tokens summed,
smoothed, thresholded at a quantile, upsampled (nearest) to the latent and repeated over its
channels.

>>> store = ledits_store(edits=2)                                  # rows: uncond, edit 0, edit 1
>>> with store.capture(unet):                                      # doctest: +SKIP
...     unet(torch.cat([latents] * 3), t, encoder_hidden_states=context)  # latents (1, 4, 32, 32)
>>> ledits_masks(store, [2, 1], threshold=0.9).shape               # doctest: +SKIP
torch.Size([2, 1, 4, 32, 32])
>>> store.end_step()                                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shapetrace.errors import InputShapeError
from shapetrace.maps._store_settings import Resolution, as_res
from shapetrace.maps.aggregation import aggregate
from shapetrace.maps.masks import token_mask
from shapetrace.maps.recipes._common import (
    fixed,
    kept_images,
    latent_of,
    quarter,
    require,
    where,
)
from shapetrace.maps.store import AttentionStore

__all__ = ["ledits_mask", "ledits_masks", "ledits_store"]

PLACES = ("up", "down")
Tokens = int | Sequence[int]


def ledits_store(
    edits: int = 1, *, images: int = 1, res: int | Resolution | None = None, **settings: Any
) -> AttentionStore:
    """A store of the current step (window "step") over up and down, rows
    [uncond (shared), edit 0, ..., edit P-1] per image, keeping the edit rows.

    ``res`` keeps only that grid; None keeps all and the readers pick int(latent / 4).
    """
    settings.setdefault("places", (*PLACES, "transformer", "single"))
    resolutions = None if res is None else [as_res(res)]
    chosen = fixed("ledits", settings, window="step", resolutions=resolutions)
    return AttentionStore.for_batch(
        edits, images_per_prompt=images, guidance=True, shared_uncond=True, **chosen
    )


def _edit_maps(store: AttentionStore, res: Resolution, select: int) -> torch.Tensor:
    """(images, h, w, M): edit ``select``'s mean maps, one per image."""
    images = kept_images(store, select)
    return torch.stack(
        [aggregate(store, res, where(store, PLACES), True, select, image=i) for i in images]
    )


def ledits_masks(
    store: AttentionStore,
    tokens: Sequence[Tokens],
    *,
    threshold: float | Sequence[float] = 0.9,
    res: int | Resolution | None = None,
    latent_size: int | Resolution | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """One mask per edit prompt: (P, images, C, H, W) of 0.0 and 1.0.

    ``tokens[c]`` is edit c's tokens: an int n for its first n (indices 1..n, LEDITS++'s
    ``num_edit_tokens``) or a list of indices. ``threshold`` is a quantile, one or one per
    edit. The latent (H, W) and channels C default to what the store saw enter the model.
    """
    require(store, "ledits", window="step", places=PLACES)
    if isinstance(tokens, (int, str)) or not isinstance(tokens, Sequence) or not tokens:
        raise InputShapeError(
            f"tokens={tokens!r}: pass one entry per edit prompt, e.g. [2, 1] (edit 0's first "
            "two tokens, edit 1's first), or ledits_mask(store, 2, select=0) for one edit"
        )
    edits = len({r.prompt for r in store.kept_rows if r.branch == "cond"})
    if len(tokens) != edits:
        raise InputShapeError(
            f"tokens has {len(tokens)} entries but the store holds {edits} edit prompts; "
            "give one entry per edit prompt"
        )
    cuts = [threshold] * edits if isinstance(threshold, (int, float)) else list(threshold)
    if len(cuts) != edits:
        raise InputShapeError(
            f"threshold={threshold!r}: one quantile, or one per edit prompt ({edits})"
        )
    masks = [
        ledits_mask(
            store, t, select=c, threshold=cut, res=res, latent_size=latent_size, channels=channels
        )
        for c, (t, cut) in enumerate(zip(tokens, cuts, strict=True))
    ]
    return torch.stack(masks)


def ledits_mask(
    store: AttentionStore,
    tokens: Tokens,
    *,
    select: int = 0,
    threshold: float = 0.9,
    res: int | Resolution | None = None,
    latent_size: int | Resolution | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """Edit ``select``'s mask: (images, C, H, W), at the latent the store saw (32x32 at 256 px).

    >>> ledits_mask(store, 2, select=0).shape                         # doctest: +SKIP
    torch.Size([1, 4, 64, 64])
    """
    require(store, "ledits", window="step", places=PLACES)
    latent = latent_of(store, latent_size)
    grid = quarter(latent) if res is None else as_res(res)
    if channels is None:
        channels = store.latent[0] if store.latent is not None else 4
    maps = _edit_maps(store, grid, select)
    return token_mask(maps, tokens, threshold=threshold, latent_size=latent, channels=channels)
