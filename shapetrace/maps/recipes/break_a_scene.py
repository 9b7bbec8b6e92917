"""Break-a-Scene: an attention loss on one forward's 16x16 cross maps, per batch row.

As Break-a-Scene's training does it: after each training forward, prompt-to-prompt's
``aggregate_attention(res=16, from_where=("up", "down"), is_cross=True, select=batch_idx)``
gives one row's maps; each asset token's map is divided by its max and compared by MSE with
that asset's mask resized to 16x16. The loss is differentiated, so the store keeps gradients
and holds one forward (window "forward").

>>> store = break_a_scene_store()                                  # each row its own prompt
>>> with store.capture(unet):                                      # doctest: +SKIP
...     unet(noisy_latents, t, encoder_hidden_states=text)         # (B, 4, 64, 64)
>>> maps = break_a_scene_maps(store, [5, 9], select=0)             # doctest: +SKIP
>>> maps.shape, break_a_scene_loss(maps, masks[0]).shape           # doctest: +SKIP
(torch.Size([2, 16, 16]), torch.Size([]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from shapetrace.errors import InputShapeError
from shapetrace.maps._store_settings import Resolution, as_res
from shapetrace.maps.aggregation import aggregate
from shapetrace.maps.recipes._common import check_tokens, fixed, quarter, require, where
from shapetrace.maps.store import AttentionStore

__all__ = ["break_a_scene_loss", "break_a_scene_maps", "break_a_scene_store"]

PLACES = ("up", "down")


def break_a_scene_store(
    *, res: int | Resolution | None = 16, grad: bool = True, **settings: Any
) -> AttentionStore:
    """A store of the last forward (window "forward") at ``res`` from up and down, with
    gradients; each batch row is its own prompt unless ``rows=`` says otherwise."""
    settings.setdefault("places", (*PLACES, "transformer", "single"))
    resolutions = None if res is None else [as_res(res)]
    chosen = fixed("break_a_scene", settings, window="forward", resolutions=resolutions)
    return AttentionStore(grad=grad, **chosen)


def break_a_scene_maps(
    store: AttentionStore,
    token_indices: Sequence[int],
    *,
    select: int = 0,
    res: int | Resolution | None = None,
) -> torch.Tensor:
    """Row ``select``'s map of each token, divided by its max: (T, h, w).

    ``res`` None takes the store's one grid if it keeps one, else a quarter of the latent.
    """
    require(store, "break_a_scene", window="forward", places=PLACES)
    if res is not None:
        grid = as_res(res)
    elif store.resolutions is not None and len(store.resolutions) == 1:
        grid = next(iter(store.resolutions))
    else:
        grid = quarter(store.latent_size)
    agg = aggregate(store, grid, where(store, PLACES), True, select)  # (h, w, M)
    m = agg.shape[-1]
    index = check_tokens(token_indices, m, low=0, high=m - 1, name="token_indices")
    maps = agg[..., index].permute(2, 0, 1)  # (T, h, w)
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / peak[:, None, None]


def break_a_scene_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Break-a-Scene's attention loss: sum over tokens of MSE(mask at the maps' size, map).

    ``maps`` (T, h, w) from ``break_a_scene_maps``; ``masks`` (T, H, W) or (T, 1, H, W) in
    {0, 1}, resized to (h, w) with nearest interpolation as ``F.interpolate`` does by default.
    """
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.dim() != 4 or maps.dim() != 3 or masks.shape[0] != maps.shape[0]:
        raise InputShapeError(
            f"maps must be (T, h, w) and masks (T, H, W) or (T, 1, H, W) with the same T; "
            f"got maps {tuple(maps.shape)}, masks {tuple(masks.shape)}"
        )
    small = F.interpolate(masks.float(), size=tuple(maps.shape[-2:]))[:, 0]  # (T, h, w)
    loss = maps.new_zeros(())
    for t in range(maps.shape[0]):
        loss = loss + F.mse_loss(small[t], maps[t].float(), reduction="mean")
    return loss
