"""Attend-and-Excite: the last forward's maps, differentiated with respect to the latents.

As diffusers' ``StableDiffusionAttendAndExcitePipeline`` does it: each step runs the UNet on
one latent with the conditional text, with gradients; the cross maps of that forward at
``attn_res`` (ceil(width / 32), 16 at 512 px) from up, down and mid are averaged over heads and
layers; start-of-text and the last token are dropped, the rest scaled by 100 and
softmaxed over tokens; each subject token's map is smoothed (3x3 Gaussian, reflect padding)
and its max taken; the loss is max over tokens of max(0, 1 - max).

>>> store = attend_excite_store()                                  # window "forward", grad
>>> latents = latents.detach().requires_grad_(True)                # doctest: +SKIP
>>> with store.capture(unet):                                      # doctest: +SKIP
...     unet(latents, t, encoder_hidden_states=cond)               # (1, 4, 64, 64), (1, 77, 768)
>>> loss = attend_excite_loss(store, [2, 5])                       # doctest: +SKIP
>>> grad, = torch.autograd.grad(loss, [latents])                   # doctest: +SKIP
>>> grad.shape                                                     # doctest: +SKIP
torch.Size([1, 4, 64, 64])

For non-square images diffusers reshapes the (h, w) grid as (w, h) (its ``attn_res`` is
(width, height)); here the grid comes from the layer's geometry, so only square sizes agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shapetrace.maps._store_settings import DEFAULT_PLACES, Resolution, as_res
from shapetrace.maps.aggregation import aggregate
from shapetrace.maps.masks import smooth
from shapetrace.maps.recipes._common import (
    check_tokens,
    fixed,
    quarter,
    require,
    require_graph,
    where,
)
from shapetrace.maps.store import AttentionStore

__all__ = [
    "attend_excite_loss",
    "attend_excite_maps",
    "attend_excite_max_attention",
    "attend_excite_store",
]

PLACES = ("up", "down", "mid")


def attend_excite_store(
    *, res: int | Resolution | None = None, grad: bool = True, **settings: Any
) -> AttentionStore:
    """A store of the last forward (window "forward") with gradients, every UNet place.

    ``res`` keeps only that grid (less memory); None keeps all and the readers pick
    ceil(latent / 4). Rows are unlabelled: each batch row is its own prompt.
    """
    settings.setdefault("places", DEFAULT_PLACES)
    resolutions = None if res is None else [as_res(res)]
    chosen = fixed("attend_excite", settings, window="forward", resolutions=resolutions)
    return AttentionStore(grad=grad, **chosen)


def attend_excite_maps(
    store: AttentionStore, *, res: int | Resolution | None = None, select: int = 0
) -> torch.Tensor:
    """The last forward's mean map over heads and layers at ``res``: (h, w, M).

    ``res`` None is ceil(latent / 4), as diffusers' ``attn_res`` default.
    """
    require(store, "attend_excite", window="forward", places=PLACES)
    grid = quarter(store.latent_size, ceil=True) if res is None else as_res(res)
    return aggregate(store, grid, where(store, PLACES), True, select)


def attend_excite_max_attention(
    store: AttentionStore,
    token_indices: Sequence[int],
    *,
    res: int | Resolution | None = None,
    select: int = 0,
    smoothing: bool = True,
) -> torch.Tensor:
    """Each subject token's max attention after A&E's softmax and smoothing: (T,).

    ``token_indices`` index the 77 tokens (the prompt's words start at 1; the last token is
    dropped by A&E, so indices run 1..M-2).
    """
    maps = attend_excite_maps(store, res=res, select=select)  # (h, w, M)
    m = maps.shape[-1]
    index = check_tokens(token_indices, m, low=1, high=m - 2, name="token_indices")
    text = (maps[:, :, 1:-1] * 100).softmax(dim=-1)  # (h, w, M - 2)
    peaks = []
    for i in index:
        image = text[:, :, i - 1]
        if smoothing:
            image = smooth(image[None])[0]
        peaks.append(image.max())
    return torch.stack(peaks)


def attend_excite_loss(
    store: AttentionStore,
    token_indices: Sequence[int],
    *,
    res: int | Resolution | None = None,
    select: int = 0,
    smoothing: bool = True,
) -> torch.Tensor:
    """A&E's loss: max over subject tokens of max(0, 1 - the token's max attention); a scalar
    that backpropagates to the latents when the store keeps gradients."""
    peaks = attend_excite_max_attention(
        store, token_indices, res=res, select=select, smoothing=smoothing
    )
    loss = (1.0 - peaks).clamp_min(0.0).max()
    require_graph(loss, store, "attend_excite_loss")
    return loss
