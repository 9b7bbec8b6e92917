"""What every recipe checks: the store's window and places, the latent, token indices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps._store_settings import Resolution, as_res
from shapetrace.maps.store import AttentionStore

__all__ = [
    "IMAGE_PLACES",
    "check_tokens",
    "fixed",
    "kept_images",
    "latent_of",
    "quarter",
    "require",
    "require_graph",
    "where",
]

#: Places of transformer models (DiT/MMDiT blocks, Flux single-stream blocks): every recipe
#: reads them beside its UNet places, so joint-attention models need nothing else.
IMAGE_PLACES = ("transformer", "single")


def require(store: AttentionStore, recipe: str, *, window: str, places: Sequence[str]) -> None:
    """Refuse a store whose window or places differ from what the peer's numbers need."""
    if not isinstance(store, AttentionStore):
        raise InputShapeError(
            f"{recipe} reads an AttentionStore, got {type(store).__name__}; build one with "
            f"{recipe}_store(...)"
        )
    store.check()
    missing = [p for p in places if p not in store.places]
    if store.window != window or missing:
        have = f"window={store.window!r}, places={store.places}"
        raise ShapeTraceError(
            f"{recipe} needs a store with window={window!r} holding places {tuple(places)}; "
            f"this one has {have}: build it with {recipe}_store(...)"
        )


def fixed(recipe: str, settings: dict[str, Any], **chosen: object) -> dict[str, Any]:
    """``settings`` with the recipe's own choices; refuse a setting that would override one."""
    clash = sorted(set(settings) & set(chosen))
    if clash:
        given = ", ".join(f"{k}={settings[k]!r}" for k in clash)
        mine = ", ".join(f"{k}={chosen[k]!r}" for k in clash)
        raise InputShapeError(
            f"{recipe}_store({given}): the recipe sets {mine} to reproduce the peer's numbers; "
            "leave it out, or build an AttentionStore(...) of your own"
        )
    return {**settings, **chosen}


def where(store: AttentionStore, unet_places: Sequence[str]) -> tuple[str, ...]:
    """The recipe's UNet places plus the transformer places the store holds."""
    return (*unet_places, *(p for p in IMAGE_PLACES if p in store.places))


def latent_of(store: AttentionStore, latent_size: object) -> Resolution:
    """``latent_size`` (checked), else the latent the store saw."""
    if latent_size is None:
        return store.latent_size
    return as_res(latent_size, name="latent_size")


def quarter(latent: Resolution, *, ceil: bool = False) -> Resolution:
    """A quarter of the latent per side: LEDITS++ truncates (int(h / 4)), Attend-and-Excite
    rounds up (ceil(width / 32) for a VAE factor of 8). 16x16 at 512 px either way."""
    h, w = latent
    if ceil:
        return (max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4)))
    return (max(1, int(h / 4)), max(1, int(w / 4)))


def kept_images(store: AttentionStore, select: int) -> list[int]:
    """Image indices of prompt ``select``'s conditional rows, in batch order."""
    images = [r.image for r in store.kept_rows if r.prompt == select and r.branch != "uncond"]
    if not images:
        have = "; ".join(str(r) for r in store.kept_rows)
        raise ShapeTraceError(f"no conditional row for prompt {select}; kept rows: {have}")
    return images


def check_tokens(indices: object, m: int, *, low: int, high: int, name: str) -> list[int]:
    """A non-empty list of ints in [low, high] (context of ``m`` tokens)."""
    items = [indices] if isinstance(indices, int) else indices
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise InputShapeError(f"{name}={indices!r}: pass token indices, e.g. [2, 5]")
    bad = [
        i for i in items if isinstance(i, bool) or not isinstance(i, int) or not low <= i <= high
    ]
    if bad:
        raise InputShapeError(
            f"{name}={list(items)!r}: {bad} outside {low}..{high} of the {m} context tokens "
            "(0 is start-of-text; the prompt's words start at 1)"
        )
    return list(items)


def require_graph(value: torch.Tensor, store: AttentionStore, recipe: str) -> None:
    """A loss from a grad=True store that carries no graph fails here, not in backward."""
    if store.grad and not value.requires_grad:
        raise ShapeTraceError(
            f"{recipe}: the maps carry no autograd graph, so the loss cannot reach the "
            "latents: run the forward under torch.enable_grad() with "
            "latents.requires_grad_(True) (or trainable weights)"
        )
