"""Per-token cross-attention maps: capture, aggregation, masks and heat maps.

>>> store = AttentionStore.for_batch(prompts=1, guidance=True)
>>> with shapetrace.trace(unet, probes=[store], monitors=False):  # doctest: +SKIP
...     unet(latents2, t, encoder_hidden_states=text2)
>>> store.aggregate(16, ("up", "down"), True, select=0).shape     # doctest: +SKIP
torch.Size([16, 16, 77])
"""

from shapetrace.maps.aggregate import (
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
