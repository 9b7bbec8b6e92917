"""Per-token cross-attention maps: capture, aggregation, masks and heat maps.

>>> store = AttentionStore.for_batch(prompts=1, guidance=True)
>>> with store.capture(unet):                                      # doctest: +SKIP
...     unet(latents2, t, encoder_hidden_states=text2)
>>> aggregate(store, 16, ("up", "down"), True, select=0).shape    # doctest: +SKIP
torch.Size([16, 16, 77])

``shapetrace.maps.recipes`` reproduces each peer's numbers (P2P, Attend-and-Excite, LEDITS++,
DAAM, Break-a-Scene) in one call.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shapetrace.maps.aggregation import (
        aggregate,
        default_resolution,
        head_maps,
        layer_maps,
        nearest_resolution,
    )
    from shapetrace.maps.masks import (
        gaussian_kernel,
        smooth,
        token_mask,
    )
    from shapetrace.maps.memory import (
        MemoryEstimate,
        estimate_memory,
    )
    from shapetrace.maps.recipes import (
        attend_excite_loss,
        attend_excite_maps,
        attend_excite_max_attention,
        attend_excite_store,
        break_a_scene_loss,
        break_a_scene_maps,
        break_a_scene_store,
        daam_maps,
        daam_store,
        ledits_mask,
        ledits_masks,
        ledits_store,
        p2p_maps,
        p2p_store,
    )
    from shapetrace.maps.recipes import break_a_scene_maps as break_a_scene_aggregate
    from shapetrace.maps.rows import (
        RowLabel,
        batch_rows,
    )
    from shapetrace.maps.store import (
        AttentionStore,
        MapKey,
        MapSum,
    )
    from shapetrace.maps.text import (
        PromptTokens,
        tokenize,
    )

# Names are imported on first use: `shapetrace maps --help` needs none of them (nor torch).
_WHERE = {
    "aggregate": "aggregation",
    "default_resolution": "aggregation",
    "head_maps": "aggregation",
    "layer_maps": "aggregation",
    "nearest_resolution": "aggregation",
    "gaussian_kernel": "masks",
    "smooth": "masks",
    "token_mask": "masks",
    "MemoryEstimate": "memory",
    "estimate_memory": "memory",
    "AttentionStore": "store",
    "MapKey": "store",
    "MapSum": "store",
    "RowLabel": "rows",
    "batch_rows": "rows",
    "PromptTokens": "text",
    "tokenize": "text",
    "attend_excite_loss": "recipes",
    "attend_excite_maps": "recipes",
    "attend_excite_max_attention": "recipes",
    "attend_excite_store": "recipes",
    "break_a_scene_loss": "recipes",
    "break_a_scene_maps": "recipes",
    "break_a_scene_store": "recipes",
    "daam_maps": "recipes",
    "daam_store": "recipes",
    "ledits_mask": "recipes",
    "ledits_masks": "recipes",
    "ledits_store": "recipes",
    "p2p_maps": "recipes",
    "p2p_store": "recipes",
}
_ALIASES = {"break_a_scene_aggregate": ("recipes", "break_a_scene_maps")}

__all__ = [
    "AttentionStore",
    "MapKey",
    "MapSum",
    "MemoryEstimate",
    "PromptTokens",
    "RowLabel",
    "aggregate",
    "attend_excite_loss",
    "attend_excite_maps",
    "attend_excite_max_attention",
    "attend_excite_store",
    "batch_rows",
    "break_a_scene_aggregate",
    "break_a_scene_loss",
    "break_a_scene_maps",
    "break_a_scene_store",
    "daam_maps",
    "daam_store",
    "default_resolution",
    "estimate_memory",
    "gaussian_kernel",
    "head_maps",
    "layer_maps",
    "ledits_mask",
    "ledits_masks",
    "ledits_store",
    "nearest_resolution",
    "p2p_maps",
    "p2p_store",
    "smooth",
    "token_mask",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"shapetrace.maps.{_WHERE[name]}"), name)
    if name in _ALIASES:
        module, real = _ALIASES[name]
        return getattr(import_module(f"shapetrace.maps.{module}"), real)
    raise AttributeError(f"module 'shapetrace.maps' has no attribute {name!r}")
