"""Per-token cross-attention maps: capture, aggregation, masks and heat maps.

>>> store = AttentionStore.for_batch(prompts=1, guidance=True)
>>> with shapetrace.trace(unet, probes=[store], monitors=False):  # doctest: +SKIP
...     unet(latents2, t, encoder_hidden_states=text2)
>>> store.aggregate(16, ("up", "down"), True, select=0).shape     # doctest: +SKIP
torch.Size([16, 16, 77])
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shapetrace.maps.aggregation import (
        aggregate,
        break_a_scene_aggregate,
        break_a_scene_loss,
        default_resolution,
        nearest_resolution,
    )
    from shapetrace.maps.masks import gaussian_kernel, ledits_mask, smooth, token_mask
    from shapetrace.maps.memory import MemoryEstimate, estimate_memory
    from shapetrace.maps.store import AttentionStore, MapSum, RowLabel, batch_rows
    from shapetrace.maps.text import PromptTokens, tokenize

# Names are imported on first use: `shapetrace maps --help` needs none of them (nor torch).
_WHERE = {
    "aggregate": "aggregation",
    "break_a_scene_aggregate": "aggregation",
    "break_a_scene_loss": "aggregation",
    "default_resolution": "aggregation",
    "nearest_resolution": "aggregation",
    "gaussian_kernel": "masks",
    "ledits_mask": "masks",
    "smooth": "masks",
    "token_mask": "masks",
    "MemoryEstimate": "memory",
    "estimate_memory": "memory",
    "AttentionStore": "store",
    "MapSum": "store",
    "RowLabel": "store",
    "batch_rows": "store",
    "PromptTokens": "text",
    "tokenize": "text",
}

__all__ = [
    "AttentionStore",
    "MapSum",
    "MemoryEstimate",
    "PromptTokens",
    "RowLabel",
    "aggregate",
    "batch_rows",
    "break_a_scene_aggregate",
    "break_a_scene_loss",
    "default_resolution",
    "estimate_memory",
    "gaussian_kernel",
    "ledits_mask",
    "nearest_resolution",
    "smooth",
    "token_mask",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"shapetrace.maps.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'shapetrace.maps' has no attribute {name!r}")
