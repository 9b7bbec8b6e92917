"""Attend-and-Excite against diffusers' own store, processor and loss, on the same tiny UNet.

Each step runs A&E's way: a forward of one latent with the conditional text and gradients,
the loss on the maps, its gradient with respect to the latents, an update, then the guided
forward (uncond, cond) without gradients. diffusers' ``AttendExciteAttnProcessor`` and
``AttentionStore`` see it with the processors swapped in; shapetrace sees the same forward
with the model's own fused SDPA, through ``attend_excite_store`` and ``store.capture``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps.recipes import (
    attend_excite_loss,
    attend_excite_maps,
    attend_excite_max_attention,
    attend_excite_store,
)
from shapetrace.models import build_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDIMScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
        pipeline_stable_diffusion_attend_and_excite as ae,
    )

TOKENS = [2, 5]
SIDE = 128  # image side: latent 16x16; cross grids 16, 8, 4 and the mid block's 2
#: a cross layer's query weight at each compared grid: the loss reaches it through q
PARAM = {
    None: "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight",
    2: "mid_block.attentions.0.transformer_blocks.0.attn2.to_q.weight",
}


@pytest.fixture(scope="module")
def unet():
    return build_model("tiny", device="cpu", seed=0).module


def diffusers_processors(unet, store) -> dict:
    """``register_attention_control`` of diffusers' A&E pipeline, written for a bare UNet."""
    procs = {}
    for name in unet.attn_processors:
        place = next(
            (p for key, p in (("mid_block", "mid"), ("up_blocks", "up"), ("down_blocks", "down"))
             if name.startswith(key)),
            None,
        )
        if place is not None:
            procs[name] = ae.AttendExciteAttnProcessor(attnstore=store, place_in_unet=place)
    store.num_att_layers = len(procs)
    return procs


def diffusers_step(unet, latents, t, cond, attn_res, param):
    """diffusers' A&E on one latent: maps (h, w, M), per-token maxima, loss, gradients."""
    store = ae.AttentionStore(attn_res)
    original = unet.attn_processors
    unet.set_attn_processor(diffusers_processors(unet, store))
    try:
        x = latents.clone().requires_grad_(True)
        with torch.enable_grad():
            unet(x, t, encoder_hidden_states=cond)
            maps = store.aggregate_attention(from_where=("up", "down", "mid"))
            peaks = ae.StableDiffusionAttendAndExcitePipeline._compute_max_attention_per_index(
                maps.clone(), TOKENS
            )
            loss = ae.StableDiffusionAttendAndExcitePipeline._compute_loss(peaks)
            grads = torch.autograd.grad(loss, [x, unet.get_parameter(param)])
    finally:
        unet.set_attn_processor(original)
    return maps.detach(), torch.stack(peaks).detach(), loss.detach(), grads


def shapetrace_step(unet, latents, t, cond, res, param):
    store = attend_excite_store()
    x = latents.clone().requires_grad_(True)
    with torch.enable_grad():
        with store.capture(unet):
            unet(x, t, encoder_hidden_states=cond)
        maps = attend_excite_maps(store, res=res)
        peaks = attend_excite_max_attention(store, TOKENS, res=res)
        loss = attend_excite_loss(store, TOKENS, res=res)
        grads = torch.autograd.grad(loss, [x, unet.get_parameter(param)])
    return maps.detach(), peaks.detach(), loss.detach(), grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "res",
    [None, pytest.param(2, marks=pytest.mark.slow)],
    ids=["default-attn-res", "mid-block-grid"],
)
def test_maps_loss_and_latent_gradients_equal_diffusers_attend_and_excite_over_guided_steps(
    unet, res
):
    g = torch.Generator().manual_seed(1)
    uncond, cond = torch.randn(1, 77, 64, generator=g), torch.randn(1, 77, 64, generator=g)
    latents = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=g)
    scheduler = DDIMScheduler.from_config({"num_train_timesteps": 1000})
    scheduler.set_timesteps(3)
    # diffusers' default attn_res is (ceil(width / 32), ceil(height / 32)): 4x4 here
    attn_res = (int(np.ceil(SIDE / 32)),) * 2 if res is None else (res, res)
    worst = {"maps": 0.0, "grad": 0.0, "param": 0.0}
    for t in scheduler.timesteps:
        param = PARAM[res]
        d_maps, d_peaks, d_loss, d_grads = diffusers_step(unet, latents, t, cond, attn_res, param)
        s_maps, s_peaks, s_loss, s_grads = shapetrace_step(unet, latents, t, cond, res, param)
        assert s_maps.shape == (*attn_res, 77)
        torch.testing.assert_close(s_maps, d_maps, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s_peaks, d_peaks, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s_loss, d_loss, rtol=1e-5, atol=1e-7)
        assert d_grads[0].abs().sum() > 0  # the loss really depends on the latents here
        worst["maps"] = max(worst["maps"], float((s_maps - d_maps).abs().max()))
        worst["grad"] = max(worst["grad"], relative(s_grads[0], d_grads[0]))
        worst["param"] = max(worst["param"], relative(s_grads[1], d_grads[1]))
        # A&E's update, then the guided forward without gradients (not captured by either)
        latents = latents - 20.0 * d_grads[0]
        with torch.no_grad():
            both = torch.cat([uncond, cond])
            u, c = unet(torch.cat([latents] * 2), t, encoder_hidden_states=both).sample.chunk(2)
            latents = scheduler.step(u + 7.5 * (c - u), t, latents).prev_sample
    print(f"A&E worst over steps (res={res}): {worst}")
    assert worst["grad"] < 1e-4 and worst["param"] < 1e-4


def test_a_store_without_the_last_forward_window_is_refused_by_the_recipe():
    from shapetrace.maps import AttentionStore

    with pytest.raises(ShapeTraceError, match=r"needs a store with window='forward'.*'run'"):
        attend_excite_maps(AttentionStore())


def test_the_loss_refuses_maps_captured_without_gradients(unet):
    store = attend_excite_store()
    x = torch.randn(1, 4, 16, 16)
    with pytest.raises(ShapeTraceError, match=r"torch\.no_grad\(\).*torch\.enable_grad\(\)"):
        with torch.no_grad(), store.capture(unet):
            unet(x, 500, encoder_hidden_states=torch.randn(1, 77, 64))


def test_the_loss_refuses_maps_that_carry_no_graph(unet):
    store = attend_excite_store()
    frozen = {n: p.requires_grad for n, p in unet.named_parameters()}
    unet.requires_grad_(False)
    try:
        with torch.enable_grad(), store.capture(unet):
            unet(torch.randn(1, 4, 16, 16), 500, encoder_hidden_states=torch.randn(1, 77, 64))
        with pytest.raises(ShapeTraceError, match=r"carry no autograd graph.*requires_grad_"):
            attend_excite_loss(store, TOKENS)
    finally:
        for name, p in unet.named_parameters():
            p.requires_grad_(frozen[name])


def test_token_indices_outside_the_text_are_refused(unet):
    store = attend_excite_store(grad=False)
    with store.capture(unet), torch.no_grad():
        unet(torch.randn(1, 4, 16, 16), 500, encoder_hidden_states=torch.randn(1, 77, 64))
    with pytest.raises(InputShapeError, match=r"token_indices=\[0, 3\]: \[0\] outside 1\.\.75"):
        attend_excite_max_attention(store, [0, 3])
