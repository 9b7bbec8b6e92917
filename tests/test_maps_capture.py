"""Capture on the real tiny UNet under the real tracer: probabilities, outputs, rows, cleanup."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import shapetrace
from shapetrace.errors import InputShapeError
from shapetrace.maps import AttentionStore, aggregate
from shapetrace.models import build_model
from tests._helpers import hook_count, processors, same_state, state_snapshot

LATENT = (8, 8)  # 64x64 images: cross layers at 8x8, 4x4, 2x2 and 1x1 (mid)


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", device="cpu", seed=0).module


def inputs(batch: int, latent=LATENT, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *latent, generator=g)
    context = torch.randn(batch, 77, 64, generator=g)
    return x, torch.tensor(500), context


def forward(unet, x, t, context, store=None):
    with torch.no_grad():
        if store is None:
            return unet(x, t, encoder_hidden_states=context).sample
        with shapetrace.trace(unet, probes=[store], monitors=False):
            return unet(x, t, encoder_hidden_states=context).sample


@contextmanager
def processor(unet, proc) -> Iterator[None]:
    before = unet.attn_processors
    unet.set_attn_processor(proc)
    try:
        yield
    finally:
        unet.set_attn_processor(before)


@contextmanager
def recorded_scores(unet) -> Iterator[dict[str, list[torch.Tensor]]]:
    """What ``attn.get_attention_scores`` returns in each cross layer: (B*H, N, M) batch-major."""
    seen: dict[str, list[torch.Tensor]] = defaultdict(list)
    layers = {n: m for n, m in unet.named_modules() if n.endswith("attn2")}
    for name, module in layers.items():
        original = module.get_attention_scores

        def record(q, k, mask=None, _original=original, _name=name):
            probs = _original(q, k, mask)
            seen[_name].append(probs.detach().clone())
            return probs

        module.get_attention_scores = record
    try:
        yield seen
    finally:
        for module in layers.values():
            del module.get_attention_scores


def geometry(name: str, latent=LATENT) -> tuple[str, tuple[int, int]]:
    """Place and (h, w) of a tiny/SD 1.5 layer from its block, as the design table says."""
    parts = name.split(".")
    if parts[0] == "mid_block":
        place, level = "mid", 3
    elif parts[0] == "down_blocks":
        place, level = "down", int(parts[1])
    else:
        place, level = "up", 3 - int(parts[1])
    return place, (latent[0] >> level, latent[1] >> level)


def hand_aggregate(seen, row: int, heads: int = 8, latent=LATENT):
    """Mean over heads and layers of row ``row``, per (place, (h, w)): (h, w, 77)."""
    groups: dict[tuple[str, tuple[int, int]], list[torch.Tensor]] = defaultdict(list)
    for name, calls in seen.items():
        place, (h, w) = geometry(name, latent)
        for probs in calls:
            bh, n, m = probs.shape
            per_row = probs.reshape(bh // heads, heads, n, m)[row]  # (H, N, M)
            groups[(place, (h, w))].append(per_row.mean(dim=0).reshape(h, w, m))
    return {key: torch.stack(maps).mean(dim=0) for key, maps in groups.items()}


@pytest.fixture(scope="module")
def materialized(tiny):
    """One CFG forward under ``AttnProcessor``: the store and what get_attention_scores gave."""
    x, t, context = inputs(2)
    store = AttentionStore.for_batch(1, guidance=True, keep="all")
    with processor(tiny, AttnProcessor()), recorded_scores(tiny) as seen:
        forward(tiny, x, t, context, store)
    return store, dict(seen)


def test_captured_probabilities_equal_those_attn_processor_materializes(materialized):
    store, seen = materialized
    assert len(seen) == 16 and all(len(calls) == 1 for calls in seen.values())
    for branch, row in (("cond", 1), ("uncond", 0)):
        for (place, res), expected in hand_aggregate(seen, row).items():
            got = aggregate(store, res, (place,), select=0, branch=branch)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_probabilities_derived_beside_fused_sdpa_equal_the_materialized_ones(tiny, materialized):
    _, seen = materialized
    derived = AttentionStore.for_batch(1, guidance=True)
    with processor(tiny, AttnProcessor2_0()):
        forward(tiny, *inputs(2), store=derived)
    for (place, res), expected in hand_aggregate(seen, 1).items():
        got = aggregate(derived, res, (place,), select=0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("proc", [AttnProcessor2_0, AttnProcessor])
def test_the_output_is_identical_with_and_without_capture(tiny, proc):
    x, t, context = inputs(2)
    with processor(tiny, proc()):
        plain = forward(tiny, x, t, context)
        store = AttentionStore.for_batch(1, guidance=True, kinds=("cross", "self"))
        captured = forward(tiny, x, t, context, store)
    assert torch.equal(plain, captured)
    assert len(store.entries) == 14  # 7 (place, resolution) keys, cross and self


def test_every_stored_map_sums_to_one_over_the_77_tokens_per_pixel(tiny):
    store = AttentionStore.for_batch(1, guidance=True)
    forward(tiny, *inputs(2), store=store)
    assert len(store.entries) == 7
    for key, entry in store.entries.items():
        sums = entry.mean().sum(dim=-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), msg=str(key))
    assert sum(e.calls for e in store.entries.values()) == 16


def test_select_picks_each_prompts_conditional_row_under_guidance(tiny):
    x1, t, _ = inputs(1)
    g = torch.Generator().manual_seed(7)
    ctx = {k: torch.randn(1, 77, 64, generator=g) for k in ("u0", "u1", "c0", "c1")}
    batch = torch.cat([ctx["u0"], ctx["u1"], ctx["c0"], ctx["c1"]])
    store = AttentionStore.for_batch(2, guidance=True, keep="all")
    forward(tiny, x1.repeat(4, 1, 1, 1), t, batch, store)
    for name, (select, branch) in {
        "c0": (0, None),
        "c1": (1, None),
        "u1": (1, "uncond"),
    }.items():
        alone = AttentionStore()  # batch 1: the row of that context alone
        forward(tiny, x1, t, ctx[name], alone)
        for res in ((8, 8), (4, 4), (2, 2)):
            expected = aggregate(alone, res, select=0)
            got = aggregate(store, res, select=select, branch=branch)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6, msg=name)


def test_resolutions_come_from_layer_geometry_for_non_square_latents(tiny):
    x, t, context = inputs(2, latent=(8, 12))
    store = AttentionStore.for_batch(1, guidance=True)
    forward(tiny, x, t, context, store)
    assert store.available()[("down", "cross")] == [(2, 3), (4, 6), (8, 12)]
    assert store.available()[("mid", "cross")] == [(1, 2)]
    assert aggregate(store, (4, 6)).shape == (4, 6, 77)


def test_a_resolution_filter_captures_only_that_level(tiny):
    store = AttentionStore.for_batch(1, guidance=True, resolutions=[4])
    forward(tiny, *inputs(2), store=store)
    assert set(store.entries) == {("down", "cross", (4, 4), ""), ("up", "cross", (4, 4), "")}
    assert store.entries[("up", "cross", (4, 4), "")].layers == {
        f"up_blocks.2.attentions.{i}.transformer_blocks.0.attn2" for i in range(3)
    }


def test_the_model_is_left_as_it_was_also_after_an_exception_in_capture(tiny):
    x, t, context = inputs(1)
    before_out = forward(tiny, x, t, context)
    hooks, procs, state = hook_count(tiny), processors(tiny), state_snapshot(tiny)
    wrong = AttentionStore.for_batch(1, guidance=True)  # two rows, but the batch is 1
    with pytest.raises(InputShapeError, match=r"got batch 1 but the store was told 2 rows"):
        forward(tiny, x, t, context, wrong)
        wrong.end_step()  # raises here if the tracer shields the forward from probe errors
    with pytest.raises(InputShapeError, match=r"got batch 1 but the store was told 2 rows"):
        aggregate(wrong, 4)
    with pytest.raises(InputShapeError, match=r"encoder_hidden_states \(1, 77, 32\)"):
        forward(tiny, x, t, torch.randn(1, 77, 32), AttentionStore())  # wrong context width

    def boom(*_):
        raise RuntimeError("boom in the mid block")

    handle = tiny.mid_block.register_forward_hook(boom)  # fails halfway, after down captures
    try:
        half = AttentionStore()
        with pytest.raises(RuntimeError, match="boom in the mid block"):
            forward(tiny, x, t, context, half)
        assert ("down", "cross", (8, 8), "") in half.entries
    finally:
        handle.remove()
    assert hook_count(tiny) == hooks
    assert processors(tiny) == procs
    assert same_state(tiny, state) and not tiny.training
    assert torch.equal(forward(tiny, x, t, context), before_out)
    store = AttentionStore()
    forward(tiny, x, t, context, store)
    assert hook_count(tiny) == hooks and store.entries


@pytest.mark.parametrize(
    ("height", "width", "levels"),
    [
        (512, 512, [(64, 64), (32, 32), (16, 16), (8, 8)]),
        (768, 768, [(96, 96), (48, 48), (24, 24), (12, 12)]),
        (256, 256, [(32, 32), (16, 16), (8, 8), (4, 4)]),
        (512, 768, [(64, 96), (32, 48), (16, 24), (8, 12)]),
    ],
)
def test_sd15_maps_are_keyed_by_geometry_at_any_size_and_match_the_estimate(height, width, levels):
    from shapetrace.maps import estimate_memory

    sd15 = build_model("sd15")  # meta: shapes only, no weights, no compute
    args, kwargs = sd15.inputs(height, width, batch=2)
    store = AttentionStore.for_batch(1, guidance=True)
    with torch.no_grad(), shapetrace.trace(sd15.module, probes=[store], monitors=False) as j:
        sd15.module(*args, **kwargs)
    assert store.available()[("down", "cross")] == sorted(levels[:3])
    assert store.available()[("up", "cross")] == sorted(levels[:3])
    assert store.available()[("mid", "cross")] == [levels[3]]
    assert {len(e.layers) for k, e in store.entries.items() if k[0] == "down"} == {2}
    assert {len(e.layers) for k, e in store.entries.items() if k[0] == "up"} == {3}
    assert estimate_memory(store, j.layers, batch=2).running == store.nbytes()
