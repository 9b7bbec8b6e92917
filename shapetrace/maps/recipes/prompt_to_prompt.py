"""Prompt-to-prompt: maps summed over steps and divided by the step count, then averaged over
heads and layers at one grid (``aggregate_attention(res, from_where, is_cross, select)``).

Prompt-to-prompt hands its store only the conditional half of a guided batch, so ``select``
is the prompt. Its ``LocalBlend`` picks single layers: build the store with
``detail="layer"`` and read them with ``shapetrace.maps.layer_maps``.

>>> store = p2p_store(prompts=2)                                  # rows: u0, u1, c0, c1
>>> for t in timesteps:                                            # doctest: +SKIP
...     with store.capture(unet):
...         unet(torch.cat([latents] * 4), t, encoder_hidden_states=context)
...     store.end_step()
>>> p2p_maps(store, 16, ("up", "down"), select=1).shape           # doctest: +SKIP
torch.Size([16, 16, 77])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shapetrace.maps._store_settings import Resolution
from shapetrace.maps.aggregation import aggregate
from shapetrace.maps.recipes._common import fixed, require
from shapetrace.maps.store import AttentionStore

__all__ = ["p2p_maps", "p2p_store"]


def p2p_store(
    prompts: int = 1, *, images_per_prompt: int = 1, guidance: bool = True, **settings: Any
) -> AttentionStore:
    """A store averaging over the whole run (window "run"), keeping the conditional rows.

    ``settings`` go to ``AttentionStore`` (``detail="layer"`` for LocalBlend's layer picks).
    """
    return AttentionStore.for_batch(
        prompts,
        images_per_prompt=images_per_prompt,
        guidance=guidance,
        **fixed("p2p", settings, window="run"),
    )


def p2p_maps(
    store: AttentionStore,
    res: int | Resolution = 16,
    from_where: Sequence[str] = ("up", "down"),
    is_cross: bool = True,
    select: int = 0,
) -> torch.Tensor:
    """Prompt-to-prompt's ``aggregate_attention``: (h, w, M) for prompt ``select``.

    The mean over heads, layers and every forward since ``reset()``; with one forward per
    step and layer that is prompt-to-prompt's sum over steps divided by the step count.
    """
    require(store, "p2p", window="run", places=from_where)
    return aggregate(store, res, from_where, is_cross, select)
