"""``AttentionStore.capture``: a trace with stores as probes, and their forward boundaries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from shapetrace.maps.store import AttentionStore

__all__ = ["capturing"]


@contextmanager
def capturing(
    model: nn.Module, stores: Sequence[AttentionStore], probes: tuple[Any, ...], *,
    monitors: bool,
) -> Iterator[Any]:
    """Trace ``model`` with ``probes``; each forward's start, and the block's end, is a
    boundary of every store, which notes the latent's (C, H, W). A failing block's error goes
    on, not a store's (kept, and raised by the store's next read)."""
    from shapetrace.tracing import trace

    def starts(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        for store in stores:
            store._boundary()
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                store.latent = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))

    handle = model.register_forward_pre_hook(starts, with_kwargs=True)
    try:
        with trace(model, probes=probes, monitors=monitors) as journey:
            yield journey
    except BaseException:
        for store in stores:
            store._boundary(raising=False)
        raise
    finally:
        handle.remove()
    for store in stores:
        store._boundary()
    for store in stores:
        store.check()
