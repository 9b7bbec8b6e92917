"""LEDITS++ against diffusers' own store, processor and smoothing, on the same tiny UNet.

The batch is [uncond, edit 0, edit 1]: one unconditional row shared by both edit prompts.
diffusers' ``LEDITSCrossAttnProcessor`` and ``LeditsAttentionStore`` (``prepare_unet``'s
set-up) see each step's forward with the processors swapped in; the masks are then built
with the pipeline's own lines (``use_cross_attn_mask``), transcribed below. shapetrace sees
the same forward with fused SDPA through ``ledits_store`` and ``store.capture``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor
from diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion import (
    LeditsAttentionStore,
    LEDITSCrossAttnProcessor,
    LeditsGaussianSmoothing,
)

from shapetrace.errors import InputShapeError
from shapetrace.maps import aggregate
from shapetrace.maps.recipes import ledits_mask, ledits_masks, ledits_store
from shapetrace.models import build_model

EDIT_TOKENS = [2, 1]  # edit 0: its first two tokens; edit 1: its first
THRESHOLD = [0.9, 0.8]


@pytest.fixture(scope="module")
def unet():
    return build_model("tiny", device="cpu", seed=0).module


def prepare_unet(unet, store, edits: int) -> dict:
    """``LEditsPPPipelineStableDiffusion.prepare_unet`` for a bare UNet."""
    procs = {}
    for name in unet.attn_processors:
        place = next(
            (p for key, p in (("mid_block", "mid"), ("up_blocks", "up"), ("down_blocks", "down"))
             if name.startswith(key)),
            None,
        )
        if place is None:
            continue
        if "attn2" in name and place != "mid":
            procs[name] = LEDITSCrossAttnProcessor(
                attention_store=store, place_in_unet=place, pnp=False, editing_prompts=edits
            )
        else:
            procs[name] = AttnProcessor()
    return procs


def pipeline_mask(store, latent_shape, c: int, n: int, threshold: float, edits: int):
    """The ``use_cross_attn_mask`` branch of the LEDITS++ pipeline's loop, for edit ``c``."""
    att_res = (int(latent_shape[-2] / 4), int(latent_shape[-1] / 4))
    out = store.aggregate_attention(
        attention_maps=store.step_store,
        prompts=list(range(edits)),
        res=att_res,
        from_where=["up", "down"],
        is_cross=True,
        select=c,
    )
    attn_map = out[:, :, :, 1 : 1 + n]  # 0 -> startoftext
    attn_map = torch.sum(attn_map, dim=3)
    attn_map = F.pad(attn_map.unsqueeze(1), (1, 1, 1, 1), mode="reflect")
    attn_map = LeditsGaussianSmoothing("cpu")(attn_map).squeeze(1)
    tmp = torch.quantile(attn_map.flatten(start_dim=1), threshold, dim=1)
    attn_mask = torch.where(attn_map >= tmp.unsqueeze(1).unsqueeze(1).repeat(1, *att_res), 1.0, 0.0)
    attn_mask = F.interpolate(attn_mask.unsqueeze(1), latent_shape[-2:]).repeat(1, 4, 1, 1)
    return out, attn_mask


@pytest.mark.parametrize(
    ("side", "steps"), [(128, 3), pytest.param(256, 3, marks=pytest.mark.slow)]
)
def test_masks_equal_the_ledits_pipeline_exactly_over_several_steps_at_the_latent_size(
    unet, side, steps
):
    edits = len(EDIT_TOKENS)
    g = torch.Generator().manual_seed(2)
    context = torch.randn(1 + edits, 77, 64, generator=g)  # [uncond, edit 0, edit 1]
    latents = torch.randn(1, 4, side // 8, side // 8, generator=g)
    scheduler = DDIMScheduler.from_config({"num_train_timesteps": 1000})
    scheduler.set_timesteps(steps)
    theirs = LeditsAttentionStore(
        average=False,
        batch_size=1,
        max_size=(latents.shape[-2] / 4.0) * (latents.shape[-1] / 4.0),
        max_resolution=None,
    )
    ours = ledits_store(edits=edits)
    original = unet.attn_processors
    worst, masks_compared, ones = 0.0, 0, 0
    for t in scheduler.timesteps:
        batch = torch.cat([latents] * (1 + edits))
        unet.set_attn_processor(prepare_unet(unet, theirs, edits))
        try:
            with torch.no_grad():
                noise = unet(batch, t, encoder_hidden_states=context).sample
        finally:
            unet.set_attn_processor(dict(original))  # diffusers empties the dict it is given
        with torch.no_grad(), ours.capture(unet):
            ours_noise = unet(batch, t, encoder_hidden_states=context).sample
        torch.testing.assert_close(ours_noise, noise, rtol=1e-4, atol=1e-5)
        got = ledits_masks(ours, EDIT_TOKENS, threshold=THRESHOLD)
        assert got.shape == (edits, 1, 4, side // 8, side // 8)  # the latent the store saw
        for c, (n, cut) in enumerate(zip(EDIT_TOKENS, THRESHOLD, strict=True)):
            out, expected = pipeline_mask(theirs, latents.shape, c, n, cut, edits)
            att_res = out.shape[1:3]
            maps = aggregate(ours, tuple(att_res), ("up", "down"), select=c)
            torch.testing.assert_close(maps, out[0], rtol=1e-5, atol=1e-7)
            worst = max(worst, float((maps - out[0]).abs().max()))
            assert torch.equal(got[c], expected), f"edit {c} at step {int(t)}"
            masks_compared += expected.numel()
            ones += int(expected.sum())
        theirs.between_steps(True)
        ours.end_step()
        u, e = noise.chunk(1 + edits)[0], noise.chunk(1 + edits)[1:]
        guided = u + sum(2.0 * (x - u) for x in e)
        latents = scheduler.step(guided, t, latents).prev_sample
    assert 0 < ones < masks_compared  # masks that select some of the latent, not all or none
    print(f"LEDITS++ at {side}px: maps max |diff| {worst:.2e}, {masks_compared} mask values equal")


def test_the_mask_follows_the_latent_the_store_saw_at_256_px(unet):
    store = ledits_store(edits=1)
    with torch.no_grad(), store.capture(unet):
        unet(torch.randn(2, 4, 32, 32), 500, encoder_hidden_states=torch.randn(2, 77, 64))
    assert store.latent == (4, 32, 32) and store.latent_size == (32, 32)
    assert ledits_mask(store, 2).shape == (1, 4, 32, 32)  # not (1, 4, 64, 64)
    assert ledits_mask(store, 2, latent_size=(64, 64), channels=1).shape == (1, 1, 64, 64)


def test_the_step_window_holds_only_the_current_step(unet):
    store = ledits_store(edits=1)
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randn(2, 77, 64, generator=g) for _ in range(2)]
    x = torch.randn(2, 4, 16, 16, generator=g)
    seen = []
    for context in contexts:
        alone = ledits_store(edits=1)
        for s in (store, alone):
            with torch.no_grad(), s.capture(unet):
                unet(x, 500, encoder_hidden_states=context)
        now = aggregate(store, 4, ("up", "down"))
        torch.testing.assert_close(now, aggregate(alone, 4, ("up", "down")))
        seen.append(now)
        store.end_step()
    assert not torch.allclose(seen[0], seen[1])
    assert store.steps == 2 and store.forwards == 2  # the window closed and reopened


def test_masks_need_one_entry_per_edit_prompt():
    store = ledits_store(edits=2)
    with pytest.raises(InputShapeError, match=r"tokens has 1 entries but the store holds 2 edit"):
        ledits_masks(store, [2])
    with pytest.raises(InputShapeError, match=r"threshold=\[0\.9\]: one quantile, or one per"):
        ledits_masks(store, [2, 1], threshold=[0.9])
