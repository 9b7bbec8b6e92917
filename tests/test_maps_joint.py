"""Cross maps of joint-attention models through the same store, aggregation and recipes: the
image-query x text-key block of each joint softmax, on the model's patch grid. The reference
is computed here, in float64, from what each attention op really received (captured by
wrapping ``scaled_dot_product_attention``), knowing each model's token order from its docs:
SD3 puts image tokens first, Flux text first."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shapetrace.maps import AttentionStore, aggregate, layer_maps
from shapetrace.maps.recipes import p2p_maps, p2p_store
from tests import tiny_models
from tests._helpers import hook_count, same_state, state_snapshot


@pytest.fixture
def sdpa_inputs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = F.scaled_dot_product_attention

    def recording(query, key, *args, **kwargs):
        seen.append((query.detach().double(), key.detach().double()))
        return original(query, key, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return seen


def _cross_blocks(inputs, rows: slice, cols: slice, row: int) -> list[torch.Tensor]:
    """Per layer: batch row ``row``'s image x text block of softmax(q kᵀ/√d), (H, N, M)."""
    blocks = []
    for q, k in inputs:
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        blocks.append(probs[row][:, rows, cols])
    return blocks


def test_sd3_cross_maps_are_the_image_rows_and_text_columns_on_the_patch_grid(sdpa_inputs):
    model, _args, kwargs, _config = tiny_models.sd3(batch=2, height=128, width=128, text=7)
    state = state_snapshot(model)
    store = AttentionStore.for_batch(1, guidance=True, places=("transformer",), detail="layer")
    with torch.no_grad(), store.capture(model):
        model(**kwargs)
    n = 64  # 128 px / 8 / patch 2 = an 8x8 grid, then 7 text tokens
    blocks = _cross_blocks(sdpa_inputs, slice(0, n), slice(n, n + 7), row=1)  # the cond row
    want = torch.stack(blocks).mean(dim=(0, 1)).reshape(8, 8, 7)
    got = aggregate(store, (8, 8), ("transformer",), True, select=0)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    per_layer = layer_maps(store, res=(8, 8), from_where=("transformer",))
    for (name, got_layer), block in zip(per_layer.items(), blocks):
        assert name.startswith("transformer_blocks.")
        torch.testing.assert_close(got_layer.double(), block.mean(0).reshape(8, 8, 7), rtol=0,
                                   atol=1e-6)
    assert hook_count(model) == 0 and same_state(model, state)


def test_flux_cross_maps_take_text_first_into_account_in_both_block_kinds(sdpa_inputs):
    model, _args, kwargs, _config = tiny_models.flux(batch=1, rows=4, cols=6, text=5)
    store = AttentionStore(places=("transformer", "single"))
    with torch.no_grad(), store.capture(model):
        model(**kwargs)
    blocks = _cross_blocks(sdpa_inputs, slice(5, 29), slice(0, 5), row=0)
    assert len(blocks) == 4  # two double-stream, two single-stream layers
    want = torch.stack(blocks).mean(dim=(0, 1)).reshape(4, 6, 5)
    got = aggregate(store, (4, 6), ("transformer", "single"), True, select=0)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)


def test_the_prompt_to_prompt_recipe_reads_sd3_like_a_unet(sdpa_inputs):
    model, _args, kwargs, _config = tiny_models.sd3(batch=2, height=128, width=128, text=7)
    store = p2p_store(prompts=1, guidance=True, places=("transformer",))
    with torch.no_grad(), store.capture(model):
        model(**kwargs)
        model(**kwargs)  # two steps: the recipe averages over them
    maps = p2p_maps(store, (8, 8), ("transformer",))
    blocks = _cross_blocks(sdpa_inputs, slice(0, 64), slice(64, 71), row=1)
    want = torch.stack(blocks).mean(dim=(0, 1)).reshape(8, 8, 7)
    torch.testing.assert_close(maps.double(), want, rtol=0, atol=1e-6)
