"""P2P, DAAM, per-layer and per-head maps, and Break-a-Scene's gradients against independent
implementations written here from the papers' definitions.

The references read the probabilities diffusers' ``AttnProcessor`` materializes
(``attn.get_attention_scores``, (B*H, N, M) batch-major) in every cross layer; shapetrace reads
the same forwards run with fused SDPA, where it derives them beside the layer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor

from shapetrace.maps import AttentionStore, head_maps, layer_maps
from shapetrace.maps.recipes import (
    break_a_scene_loss,
    break_a_scene_maps,
    break_a_scene_store,
    daam_maps,
    daam_store,
    p2p_maps,
    p2p_store,
)
from shapetrace.models import build_model
from tests.test_maps_capture import geometry

HEADS = 8
LATENT = (16, 16)  # 128 px: cross grids 16, 8, 4 (down/up) and 2 (mid)


@pytest.fixture(scope="module")
def unet():
    return build_model("tiny", device="cpu", seed=0).module


@contextmanager
def materialized(unet, *, keep_graph: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Run ``AttnProcessor`` and record each cross layer's probabilities, in call order."""
    seen: dict[str, list[torch.Tensor]] = defaultdict(list)
    layers = {n: m for n, m in unet.named_modules() if n.endswith("attn2")}
    before = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())
    for name, module in layers.items():

        def record(q, k, mask=None, _original=module.get_attention_scores, _name=name):
            probs = _original(q, k, mask)
            seen[_name].append(probs if keep_graph else probs.detach().clone())
            return probs

        module.get_attention_scores = record
    try:
        yield seen
    finally:
        for module in layers.values():
            del module.get_attention_scores
        unet.set_attn_processor(before)


def cond_heads(probs: torch.Tensor, row: int) -> torch.Tensor:
    """(B*H, N, M) -> row ``row``'s (H, N, M)."""
    bh, n, m = probs.shape
    return probs.reshape(bh // HEADS, HEADS, n, m)[row]


@pytest.fixture(scope="module")
def guided_run(unet):
    """Two DDIM steps for two prompts under guidance (batch u0, u1, c0, c1): the reference
    probabilities per step, and stores for P2P, per-layer and per-head capture."""
    g = torch.Generator().manual_seed(3)
    context = torch.randn(4, 77, 64, generator=g)
    latents = torch.randn(2, 4, *LATENT, generator=g)
    scheduler = DDIMScheduler.from_config({"num_train_timesteps": 1000})
    scheduler.set_timesteps(2)
    p2p, per_layer = p2p_store(prompts=2), p2p_store(prompts=2, detail="layer")
    daam = daam_store(prompts=2)
    steps = []
    for t in scheduler.timesteps:
        x = torch.cat([latents] * 2)
        with torch.no_grad(), materialized(unet) as seen:
            noise = unet(x, t, encoder_hidden_states=context).sample
        steps.append(dict(seen))
        with torch.no_grad(), p2p.capture(unet, probes=[per_layer, daam]):  # one traced forward
            unet(x, t, encoder_hidden_states=context)
        for store in (p2p, per_layer, daam):
            store.end_step()
        u, c = noise.chunk(2)
        latents = scheduler.step(u + 7.5 * (c - u), t, latents).prev_sample
    return steps, p2p, per_layer, daam


def p2p_reference(steps, res: int, from_where, select: int) -> torch.Tensor:
    """prompt-to-prompt's AttentionStore and aggregate_attention: the conditional half of each
    call stored per place (maps of at most 32x32), summed over steps, divided by their count,
    reshaped (prompts, H, res, res, M), row ``select``, averaged over heads and layers."""
    total: dict[str, list[torch.Tensor]] = {}
    for seen in steps:
        step: dict[str, list[torch.Tensor]] = defaultdict(list)
        for name, calls in seen.items():
            place = geometry(name, LATENT)[0]
            for attn in calls:
                half = attn[attn.shape[0] // 2 :]  # controller: attn[h // 2:] is the cond half
                if half.shape[1] <= 32**2:
                    step[f"{place}_cross"].append(half)
        if not total:
            total = {k: [a.clone() for a in v] for k, v in step.items()}
        else:
            for key in total:
                total[key] = [a + b for a, b in zip(total[key], step[key], strict=True)]
    average = {k: [a / len(steps) for a in v] for k, v in total.items()}
    out = []
    for location in from_where:
        for item in average[f"{location}_cross"]:
            if item.shape[1] == res**2:
                out.append(item.reshape(2, -1, res, res, item.shape[-1])[select])
    maps = torch.cat(out, dim=0)
    return maps.sum(0) / maps.shape[0]


@pytest.mark.parametrize("res", [8, 4])
def test_p2p_maps_equal_prompt_to_prompts_aggregate_attention(guided_run, res):
    steps, p2p, _, _ = guided_run
    for select in (0, 1):
        for where in (("up", "down"), ("down",)):
            expected = p2p_reference(steps, res, where, select)
            got = p2p_maps(p2p, res, where, select=select)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_each_layer_keeps_its_own_mean_map_over_heads_and_steps(guided_run):
    steps, _, per_layer, _ = guided_run
    maps = layer_maps(per_layer, select=1)
    assert list(maps) == list(steps[0])  # every cross layer, in call order
    for name, got in maps.items():
        h, w = geometry(name, LATENT)[1]
        expected = torch.stack([cond_heads(s[name][0], 3).mean(0) for s in steps]).mean(0)
        torch.testing.assert_close(got, expected.reshape(h, w, 77), rtol=1e-5, atol=1e-7)


def test_each_head_keeps_its_own_map_over_steps(guided_run):
    steps, _, _, daam = guided_run
    name = "up_blocks.2.attentions.1.transformer_blocks.0.attn2"
    expected = torch.stack([cond_heads(s[name][0], 2) for s in steps]).mean(0)  # (H, N, M)
    got = head_maps(daam, name, select=0)
    assert got.shape == (HEADS, 8, 8, 77)
    torch.testing.assert_close(got, expected.reshape(HEADS, 8, 8, 77), rtol=1e-5, atol=1e-7)


def daam_reference(steps, row: int, size, reduce: str) -> torch.Tensor:
    """DAAM: for every down/up cross layer and head, the map (M, h, w) summed over steps,
    upsampled bicubically to the latent, clamped at 0; then summed (or averaged) over them."""
    out, count = torch.zeros(77, *size), 0
    for name in steps[0]:
        place, (h, w) = geometry(name, LATENT)
        if place == "mid":
            continue
        per_head = sum(cond_heads(s[name][0], row) for s in steps)  # (H, N, M)
        for head in range(HEADS):
            heat = per_head[head].T.reshape(77, 1, h, w)
            up = F.interpolate(heat, size=size, mode="bicubic").clamp_(min=0)
            out += up[:, 0]
            count += 1
    return out / count if reduce == "mean" else out


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_daam_maps_equal_per_head_upsampled_clamped_and_summed_maps(guided_run, reduce):
    steps, p2p, _, daam = guided_run
    for select, row in ((0, 2), (1, 3)):
        expected = daam_reference(steps, row, LATENT, reduce)
        got = daam_maps(daam, select=select, reduce=reduce)
        assert got.shape == (77, *LATENT)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the clamp is why DAAM needs each head: the mean map upsampled is not the same
    mean = p2p_maps(p2p, 8, ("up", "down")).permute(2, 0, 1)[:, None]
    naive = F.interpolate(mean, size=LATENT, mode="bicubic")[:, 0]
    assert not torch.allclose(naive, daam_maps(daam, reduce="mean"), rtol=1e-3)
    some = daam_maps(daam, tokens=[2, 5], size=32)
    torch.testing.assert_close(some, daam_maps(daam, size=32)[[2, 5]])


def test_recipes_refuse_a_store_set_up_for_another_peer():
    from shapetrace.errors import ShapeTraceError

    with pytest.raises(ShapeTraceError, match=r"p2p needs a store with window='run'.*'forward'"):
        p2p_maps(break_a_scene_store(), 16)
    with pytest.raises(ShapeTraceError, match=r"daam needs each head's map \(detail='head'\)"):
        daam_maps(p2p_store())
    with pytest.raises(ShapeTraceError, match=r"layer_maps needs a store that keeps layers apart"):
        layer_maps(AttentionStore())


def test_break_a_scene_loss_gradients_equal_a_hand_written_probe_per_batch_row(unet):
    """Break-a-Scene trains on a batch without guidance; each row's loss is differentiated."""
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, 4, *LATENT, generator=g)
    context = torch.randn(2, 77, 64, generator=g)
    masks = (torch.rand(2, 2, 1, 128, 128, generator=g) > 0.5).float()  # per row, two assets
    tokens, res = [3, 6], 4
    param = "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    x = x0.clone().requires_grad_(True)
    with torch.enable_grad(), materialized(unet, keep_graph=True) as seen:
        unet(x, 400, encoder_hidden_states=context)
    store = break_a_scene_store(res=res)
    y = x0.clone().requires_grad_(True)
    with torch.enable_grad(), store.capture(unet):
        unet(y, 400, encoder_hidden_states=context)
    for select in (0, 1):  # one forward, one loss per batch row
        out = [
            calls[0].reshape(2, HEADS, res, res, 77)[select]
            for name, calls in seen.items()
            if geometry(name, LATENT)[0] in ("up", "down") and calls[0].shape[1] == res**2
        ]
        agg = torch.cat(out).sum(0) / (len(out) * HEADS)
        ref_maps = torch.stack([agg[..., i] / agg[..., i].max() for i in tokens])
        small = F.interpolate(masks[select], size=(res, res))[:, 0]
        ref_loss = sum(F.mse_loss(small[i], ref_maps[i]) for i in range(2))
        weight = unet.get_parameter(param)
        ref_grads = torch.autograd.grad(ref_loss, [x, weight], retain_graph=True)
        maps = break_a_scene_maps(store, tokens, select=select)
        loss = break_a_scene_loss(maps, masks[select])
        grads = torch.autograd.grad(loss, [y, weight], retain_graph=True)
        torch.testing.assert_close(maps, ref_maps, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
        for got, ref in zip(grads, ref_grads, strict=True):
            assert ref.abs().sum() > 0
            assert float((got - ref).norm() / ref.norm()) < 1e-4
