"""Aggregation against prompt-to-prompt's and Break-a-Scene's code, written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps import (
    AttentionStore,
    aggregate,
    break_a_scene_loss,
    break_a_scene_maps,
    break_a_scene_store,
    default_resolution,
    nearest_resolution,
)
from tests.test_maps_store import FakeCall, FakeLayer, random_probs

HEADS = 2
LAYERS = (  # (name, place, (h, w)), in call order within one step
    ("down.0", "down", (4, 4)),
    ("down.1", "down", (2, 2)),
    ("mid.0", "mid", (1, 1)),
    ("up.0", "up", (2, 2)),
    ("up.1", "up", (2, 2)),
    ("up.2", "up", (4, 4)),
)


def p2p_aggregate(steps: list[dict[str, list[torch.Tensor]]], res: int, from_where, select: int):
    """prompt-to-prompt's AttentionStore + aggregate_attention, as its code does it.

    Each step's store maps "{place}_cross" to a list of (B*H, N, M) tensors, in call order;
    between steps they are summed per position, get_average_attention divides by the steps.
    """
    total = {k: [t.clone() for t in v] for k, v in steps[0].items()}
    for step in steps[1:]:
        for key in total:
            for i in range(len(total[key])):
                total[key][i] += step[key][i]
    average = {k: [t / len(steps) for t in v] for k, v in total.items()}
    out = []
    for location in from_where:
        for item in average[f"{location}_cross"]:
            if item.shape[1] == res**2:
                cross_maps = item.reshape(-1, HEADS, res, res, item.shape[-1])[select]
                out.append(cross_maps)
    out = torch.cat(out, dim=0)
    return out.sum(0) / out.shape[0]


def run_steps(n_steps: int, batch: int, store: AttentionStore) -> list[dict]:
    """Feed the store n_steps x LAYERS random calls; return them in P2P's layout."""
    steps = []
    for s in range(n_steps):
        step: dict[str, list[torch.Tensor]] = {f"{p}_cross": [] for p in ("down", "mid", "up")}
        for i, (name, place, (h, w)) in enumerate(LAYERS):
            probs = random_probs(batch, HEADS, h * w, seed=100 * s + i)  # (B, H, N, M)
            store.on_attention(FakeCall(FakeLayer(name, place=place, resolution=(h, w)), probs))
            step[f"{place}_cross"].append(probs.reshape(batch * HEADS, h * w, -1))
        store.end_step()
        steps.append(step)
    return steps


@pytest.mark.parametrize("res", [2, 4])
def test_aggregate_equals_prompt_to_prompt_averaging_over_heads_layers_and_steps(res):
    store = AttentionStore.for_batch(2, guidance=False)
    steps = run_steps(3, 2, store)
    for select in (0, 1):
        expected = p2p_aggregate(steps, res, ("up", "down"), select)
        got = aggregate(store, res, ("up", "down"), True, select)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_aggregate_includes_mid_only_when_asked():
    store = AttentionStore.for_batch(1, guidance=False)
    steps = run_steps(2, 1, store)
    torch.testing.assert_close(
        aggregate(store, 1, ("mid",)), p2p_aggregate(steps, 1, ("mid",), 0), rtol=1e-6, atol=1e-7
    )
    with pytest.raises(ShapeTraceError, match=r"cross-attention maps at 1x1 in \('up', 'down'\)"):
        aggregate(store, 1)


def test_every_aggregated_map_sums_to_one_over_the_tokens_per_pixel():
    store = AttentionStore.for_batch(1, guidance=True)
    run_steps(2, 2, store)
    for res in (2, 4):
        sums = aggregate(store, res).sum(dim=-1)
        torch.testing.assert_close(sums, torch.ones_like(sums))


def test_aggregate_without_matching_maps_lists_what_is_stored():
    store = AttentionStore.for_batch(1, guidance=False)
    run_steps(1, 1, store)
    with pytest.raises(ShapeTraceError, match=r"at 8x8 .* down cross: 2x2 4x4"):
        aggregate(store, 8)
    with pytest.raises(ShapeTraceError, match="no self-attention maps at 2x2"):
        aggregate(store, 2, is_cross=False)
    with pytest.raises(InputShapeError, match=r"from_where=\['middle'\]: .*did you mean 'mid'"):
        aggregate(store, 2, ("middle",))


def test_default_resolution_is_the_stored_level_nearest_a_quarter_of_the_latent():
    store = AttentionStore.for_batch(1, guidance=False)
    run_steps(1, 1, store)
    assert default_resolution(store, latent=(16, 16)) == (4, 4)
    assert default_resolution(store, latent=(8, 8)) == (2, 2)
    assert nearest_resolution([(64, 64), (32, 32), (16, 16), (8, 8)], (64, 64)) == (16, 16)
    assert nearest_resolution([(96, 96), (48, 48), (24, 24), (12, 12)], (96, 96)) == (24, 24)
    assert nearest_resolution([(64, 96), (32, 48), (16, 24), (8, 12)], (64, 96)) == (16, 24)


def test_break_a_scene_maps_are_the_16x16_aggregate_per_token_divided_by_its_max():
    store = break_a_scene_store(grad=False)
    probs = random_probs(1, HEADS, 256)
    store.on_attention(FakeCall(FakeLayer("up.attn2", place="up", resolution=(16, 16)), probs))
    agg = probs[0].mean(dim=0).reshape(16, 16, 77)
    maps = break_a_scene_maps(store, [2, 5])
    assert maps.shape == (2, 16, 16)
    for t, index in enumerate((2, 5)):
        torch.testing.assert_close(maps[t], agg[..., index] / agg[..., index].max())
    with pytest.raises(InputShapeError, match=r"token_indices=\[77\]: \[77\] outside 0\.\.76"):
        break_a_scene_maps(store, [77])


def test_break_a_scene_loss_is_the_sum_of_mse_against_masks_resized_to_the_maps():
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, 0, :32] = 1.0
    masks[1, 0, :, 32:] = 1.0
    small = F.interpolate(masks, size=(16, 16))[:, 0]
    expected = ((small[0] - maps[0]) ** 2).mean() + ((small[1] - maps[1]) ** 2).mean()
    torch.testing.assert_close(break_a_scene_loss(maps, masks), expected)
    torch.testing.assert_close(break_a_scene_loss(maps, masks[:, 0]), expected)
    with pytest.raises(InputShapeError, match=r"got maps \(2, 16, 16\), masks \(3, 1, 64, 64\)"):
        break_a_scene_loss(maps, torch.zeros(3, 1, 64, 64))
