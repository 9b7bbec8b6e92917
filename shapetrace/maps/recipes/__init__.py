"""Each peer's recipe in one call: a store set up as the peer's, and the peer's reading of it.

- prompt-to-prompt: ``p2p_store``, ``p2p_maps``; the run (mean over steps).
- Attend-and-Excite: ``attend_excite_store``, ``attend_excite_maps``, ``attend_excite_loss``;
  the last forward, with gradients.
- LEDITS++: ``ledits_store``, ``ledits_masks`` (``ledits_mask`` for one edit); the current step.
- DAAM: ``daam_store``, ``daam_maps``; the run, every head kept apart.
- Break-a-Scene: ``break_a_scene_store``, ``break_a_scene_maps``, ``break_a_scene_loss``; the
  last forward, with gradients.

>>> store = ledits_store(edits=1)
>>> store.window, [r.branch for r in store.rows]
('step', ['uncond', 'cond'])
"""

from shapetrace.maps.recipes.attend_excite import (
    attend_excite_loss,
    attend_excite_maps,
    attend_excite_max_attention,
    attend_excite_store,
)
from shapetrace.maps.recipes.break_a_scene import (
    break_a_scene_loss,
    break_a_scene_maps,
    break_a_scene_store,
)
from shapetrace.maps.recipes.daam import daam_maps, daam_store
from shapetrace.maps.recipes.ledits import ledits_mask, ledits_masks, ledits_store
from shapetrace.maps.recipes.prompt_to_prompt import p2p_maps, p2p_store

__all__ = [
    "attend_excite_loss",
    "attend_excite_maps",
    "attend_excite_max_attention",
    "attend_excite_store",
    "break_a_scene_loss",
    "break_a_scene_maps",
    "break_a_scene_store",
    "daam_maps",
    "daam_store",
    "ledits_mask",
    "ledits_masks",
    "ledits_store",
    "p2p_maps",
    "p2p_store",
]
