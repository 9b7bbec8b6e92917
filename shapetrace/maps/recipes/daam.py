"""DAAM: per-head maps, upsampled to the latent and clamped at 0, summed over heads and layers.

As the DAAM code (castorini/daam, ``trace.py``) does it: each cross layer of the down and up
blocks keeps one map per head, (M, h, w), summed over the denoising steps (conditional rows
only); each is upsampled bicubically to the latent size and clamped at 0 (bicubic undershoots);
then they are summed over heads and layers (``reduce="mean"`` divides by their number, as DAAM's
``compute_global_heat_map``). The clamp makes this differ from upsampling a mean map, so it
needs the per-head store (``detail="head"``).

>>> store = daam_store()                                           # rows: uncond, cond
>>> for t in timesteps:                                            # doctest: +SKIP
...     with store.capture(unet):
...         unet(torch.cat([latents] * 2), t, encoder_hidden_states=context)
...     store.end_step()
>>> daam_maps(store).shape                                         # doctest: +SKIP
torch.Size([77, 64, 64])

DAAM's code assumes 512 px (it skips maps whose side is latent / 8 with a latent of 64); here
every down and up grid counts at any size, with the latent taken from the store.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from shapetrace.errors import ShapeTraceError
from shapetrace.maps._store_settings import Resolution
from shapetrace.maps.recipes._common import check_tokens, fixed, latent_of, require, where
from shapetrace.maps.store import AttentionStore

__all__ = ["daam_maps", "daam_store"]

PLACES = ("down", "up")


def daam_store(
    prompts: int = 1, *, images_per_prompt: int = 1, guidance: bool = True, **settings: Any
) -> AttentionStore:
    """A store keeping every head of every down/up cross layer, summed over the run."""
    settings.setdefault("places", (*PLACES, "transformer", "single"))
    return AttentionStore.for_batch(
        prompts,
        images_per_prompt=images_per_prompt,
        guidance=guidance,
        **fixed("daam", settings, window="run", detail="head"),
    )


def daam_maps(
    store: AttentionStore,
    *,
    select: int = 0,
    image: int = 0,
    size: int | Resolution | None = None,
    reduce: Literal["sum", "mean"] = "sum",
    tokens: list[int] | None = None,
) -> torch.Tensor:
    """DAAM's heat maps, one per token: (M, H, W) at the latent size (or ``size``).

    ``tokens`` keeps only those token indices, (T, H, W), computed for them alone.
    """
    require(store, "daam", window="run", places=PLACES)
    if store.detail != "head":
        raise ShapeTraceError(
            f"daam needs each head's map (detail='head'); this store has "
            f"detail={store.detail!r}: build it with daam_store(...)"
        )
    if reduce not in ("sum", "mean"):
        raise ShapeTraceError(f"reduce={reduce!r}: 'sum' (DAAM's paper) or 'mean' (its code)")
    out_h, out_w = latent_of(store, size)
    pos = store.row_position(select, image=image)
    places, total, count = where(store, PLACES), None, 0
    for key, entry in store.entries.items():
        if key.place not in places or key.kind not in ("cross", "joint"):
            continue
        h, w = key.resolution
        heads = entry.total[pos]  # (H, h*w, M), summed over steps
        if tokens is not None:
            m = heads.shape[-1]
            heads = heads[..., check_tokens(tokens, m, low=0, high=m - 1, name="tokens")]
        maps = heads.transpose(1, 2).reshape(-1, 1, h, w)  # (H*M, 1, h, w)
        up = F.interpolate(maps, size=(out_h, out_w), mode="bicubic").clamp(min=0.0)
        summed = up.reshape(heads.shape[0], -1, out_h, out_w).sum(dim=0)  # (M, H, W)
        total = summed if total is None else total + summed
        count += heads.shape[0]
    if total is None:
        raise ShapeTraceError(
            f"no cross-attention heads stored in {places}; did the traced forward run any "
            "down or up cross layer?"
        )
    return total / count if reduce == "mean" else total
