"""LEDITS++ masks against diffusers' own smoothing and small hand computations."""

from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion import (
    LeditsGaussianSmoothing,
)

from shapetrace.errors import InputShapeError
from shapetrace.maps import gaussian_kernel, ledits_mask, ledits_store, smooth, token_mask
from tests.test_maps_store import FakeCall, FakeLayer, random_probs


def one_hot_maps(values: torch.Tensor, token: int, m: int = 77) -> torch.Tensor:
    """(h, w, m) maps whose token ``token`` holds ``values`` (h, w) and the rest zero."""
    maps = torch.zeros(*values.shape, m)
    maps[..., token] = values
    return maps


def test_the_smoothing_kernel_is_diffusers_ledits_gaussian():
    torch.testing.assert_close(gaussian_kernel(), LeditsGaussianSmoothing("cpu").weight)
    assert gaussian_kernel().sum().item() == pytest.approx(1.0)


def test_smoothing_keeps_a_constant_map_and_spreads_a_peak_to_its_neighbours():
    flat = torch.full((1, 4, 4), 0.25)
    torch.testing.assert_close(smooth(flat), flat)
    peak = torch.zeros(1, 5, 5)
    peak[0, 2, 2] = 1.0
    out = smooth(peak)[0]
    k = gaussian_kernel()[0, 0]
    torch.testing.assert_close(out[1:4, 1:4], k.flip(0, 1))
    assert out[0].abs().sum() == 0 and out[:, 0].abs().sum() == 0


def test_the_mask_keeps_pixels_at_or_above_the_quantile_by_hand():
    values = torch.arange(16, dtype=torch.float32).reshape(4, 4)  # 0..15
    maps = one_hot_maps(values, 1)
    mask = token_mask(maps, 1, threshold=0.75, smoothing=False, channels=1)
    # quantile 0.75 of 0..15 with linear interpolation is 11.25: pixels 12..15 stay
    expected = (values >= 11.25).float()
    assert mask.shape == (1, 1, 4, 4)
    torch.testing.assert_close(mask[0, 0], expected)
    assert int(mask.sum()) == 4


def test_edit_tokens_are_summed_before_thresholding():
    background = torch.arange(16, dtype=torch.float32).reshape(4, 4) * 1e-3  # max at (3, 3)
    a = background.clone()
    a[0, 0] = 1.0
    b = torch.zeros(4, 4)
    b[3, 3] = 1.0
    maps = torch.zeros(4, 4, 77)
    maps[..., 1], maps[..., 2] = a, b
    # summed: 14 background pixels and two peaks; the 0.9 quantile lies between them
    mask = token_mask(maps, 2, threshold=0.9, smoothing=False, channels=1)[0, 0]
    assert mask[0, 0] == 1.0 and mask[3, 3] == 1.0 and mask.sum() == 2
    # token 1 alone: one peak above 15 background pixels, (3, 3) only background
    only_first = token_mask(maps, [1], threshold=0.95, smoothing=False, channels=1)[0, 0]
    assert only_first[0, 0] == 1.0 and only_first[3, 3] == 0.0 and only_first.sum() == 1


def test_the_mask_is_upsampled_to_the_latent_and_repeated_over_its_channels():
    values = torch.tensor([[0.1, 1.0], [0.2, 0.3]])  # 0.75 quantile: 0.475
    maps = one_hot_maps(values, 3)
    mask = token_mask(maps, [3], threshold=0.75, latent_size=(8, 8), smoothing=False)
    assert mask.shape == (1, 4, 8, 8)
    expected = torch.zeros(8, 8)
    expected[:4, 4:] = 1.0  # nearest upsampling: each map pixel is a 4x4 block
    for c in range(4):
        torch.testing.assert_close(mask[0, c], expected)


def test_a_batch_of_maps_gives_a_mask_per_row():
    maps = torch.rand(3, 4, 4, 77, generator=torch.Generator().manual_seed(0))
    assert token_mask(maps, 2, latent_size=(16, 16)).shape == (3, 4, 16, 16)


def test_start_of_text_is_refused_as_an_edit_token():
    with pytest.raises(InputShapeError, match="token index 0 is start-of-text"):
        token_mask(torch.rand(4, 4, 77), [0, 1])


def test_bad_tokens_thresholds_and_shapes_are_refused():
    maps = torch.rand(4, 4, 77)
    with pytest.raises(InputShapeError, match=r"token indices \[80\] are outside the 77"):
        token_mask(maps, [80])
    with pytest.raises(InputShapeError, match=r"threshold is a quantile in \[0, 1\], got 1.5"):
        token_mask(maps, 1, threshold=1.5)
    with pytest.raises(InputShapeError, match="no edit tokens given"):
        token_mask(maps, [])
    with pytest.raises(InputShapeError, match=r"maps must be \(h, w, M\) or \(B, h, w, M\)"):
        token_mask(torch.rand(77), 1)
    with pytest.raises(InputShapeError, match=r"smooth takes \(B, h, w\) maps"):
        smooth(torch.rand(4, 4))


def test_ledits_mask_thresholds_the_stores_aggregate_at_the_latent_it_saw():
    store = ledits_store(edits=1)  # rows: uncond (shared), edit 0
    probs = random_probs(2, 2, 16)
    store.on_attention(FakeCall(FakeLayer("up.attn2", place="up", resolution=(4, 4)), probs))
    # no capture: the latent is the largest grid the store saw (4x4), the mask is that size
    assert ledits_mask(store, 2, res=4, threshold=0.8).shape == (1, 4, 4, 4)
    got = ledits_mask(store, 2, res=4, threshold=0.8, latent_size=(16, 16))
    maps = probs[1].mean(dim=0).reshape(4, 4, 77)  # the edit row, mean over heads
    expected = token_mask(maps, 2, threshold=0.8, latent_size=(16, 16))
    assert got.shape == (1, 4, 16, 16)
    torch.testing.assert_close(got, expected)


def test_the_mask_equals_the_ledits_pipeline_steps_written_out():
    out = torch.rand(2, 16, 16, 77, generator=torch.Generator().manual_seed(3))  # (B, h, w, 77)
    n, threshold = 3, 0.9
    # diffusers LEditsPPPipelineStableDiffusion, use_cross_attn_mask branch
    attn_map = out[:, :, :, 1 : 1 + n].sum(dim=3)
    attn_map = torch.nn.functional.pad(attn_map.unsqueeze(1), (1, 1, 1, 1), mode="reflect")
    attn_map = LeditsGaussianSmoothing("cpu")(attn_map).squeeze(1)
    tmp = torch.quantile(attn_map.flatten(start_dim=1), threshold, dim=1)
    attn_mask = torch.where(attn_map >= tmp.unsqueeze(1).unsqueeze(1).repeat(1, 16, 16), 1.0, 0.0)
    attn_mask = torch.nn.functional.interpolate(attn_mask.unsqueeze(1), (64, 64)).repeat(1, 4, 1, 1)
    got = token_mask(out, n, threshold=threshold, latent_size=(64, 64))
    torch.testing.assert_close(got, attn_mask)
