"""The seeds' reference modules: shapes from the tutorials, values against hand-written
float64 attention, loud errors for shapes that cannot work, and meta-device construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from shapetrace.errors import InputShapeError
from shapetrace.reference import (
    CrossAttention,
    CrossAttnResBlock,
    ReferenceModel,
    ResBlock,
    SimplifiedCLIPTextEncoder,
    SpatialCrossAttention,
    cross_attention,
    timestep_embedding,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


def _linear64(layer: nn.Linear, x: Tensor) -> Tensor:
    """x @ W^T + b in float64, written out."""
    return x.double() @ layer.weight.double().T + layer.bias.double()


def _manual_multihead(attn: CrossAttention, x: Tensor, context: Tensor) -> Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, in float64, heads sliced out by hand."""
    q, k, v = _linear64(attn.to_q, x), _linear64(attn.to_k, context), _linear64(attn.to_v, context)
    d = attn.d_head
    heads = []
    for h in range(attn.num_heads):
        qh, kh, vh = (t[..., h * d : (h + 1) * d] for t in (q, k, v))
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
        probs = torch.exp(scores - scores.amax(-1, keepdim=True))
        heads.append((probs / probs.sum(-1, keepdim=True)) @ vh)
    return _linear64(attn.to_out, torch.cat(heads, dim=-1))


def test_seed_000_example_maps_image_and_text_features_to_the_image_shape() -> None:
    attn = CrossAttention(query_dim=512, context_dim=768, num_heads=8)
    out = attn(_randn(2, 64, 512), _randn(2, 77, 768, seed=1))
    assert out.shape == (2, 64, 512)
    assert (attn.num_heads, attn.heads, attn.d_head) == (8, 8, 64)


def test_cross_attention_equals_hand_written_float64_attention() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=48, context_dim=20, num_heads=4)
    x, context = _randn(3, 7, 48), _randn(3, 5, 20, seed=1)
    got = attn.double()(x.double(), context.double())
    torch.testing.assert_close(got, _manual_multihead(attn, x, context), rtol=1e-10, atol=1e-12)


def test_cross_attention_float32_agrees_with_float64_reference() -> None:
    torch.manual_seed(1)
    attn = CrossAttention(query_dim=40, context_dim=24, num_heads=8)
    x, context = _randn(2, 9, 40), _randn(2, 77, 24, seed=1)
    expected = _manual_multihead(attn, x, context).float()
    torch.testing.assert_close(attn(x, context), expected, rtol=1e-5, atol=1e-5)


def test_cross_attention_refuses_a_query_dim_that_heads_cannot_split() -> None:
    with pytest.raises(InputShapeError, match=r"query_dim 100 is not divisible by num_heads 8.*96"):
        CrossAttention(query_dim=100, context_dim=768, num_heads=8)
    with pytest.raises(InputShapeError, match=r"num_heads 0 must be >= 1"):
        CrossAttention(query_dim=64, context_dim=768, num_heads=0)


@pytest.mark.parametrize(
    ("x_shape", "context_shape", "match"),
    [
        ((2, 64, 320), (2, 77, 768), r"x has width 320 .* query_dim is 512"),
        ((2, 64, 512), (2, 77, 1024), r"context has width 1024 .* context_dim is 768"),
        ((2, 512, 8, 8), (2, 77, 768), r"x has shape \(2, 512, 8, 8\), expected \(B, N, 512\)"),
        ((2, 64, 512), (77, 768), r"context has shape \(77, 768\).*unsqueeze\(0\)"),
        ((2, 64, 512), (3, 77, 768), r"x has batch 2 .* context has batch 3"),
    ],
)
def test_cross_attention_names_shapes_and_fix_for_inputs_that_cannot_work(
    x_shape: tuple[int, ...], context_shape: tuple[int, ...], match: str
) -> None:
    with torch.device("meta"):
        attn = CrossAttention(512, 768, 8)
        x, context = torch.empty(x_shape), torch.empty(context_shape)
    with pytest.raises(InputShapeError, match=match):
        attn(x, context)


def test_functional_cross_attention_weights_persist_between_calls() -> None:
    torch.manual_seed(0)
    params = SpatialCrossAttention(channels=32, context_dim=64)
    x, context = _randn(2, 32, 16, 16), _randn(2, 10, 64, seed=1)
    first, second = cross_attention(x, context, params), cross_attention(x, context, params)
    assert first.shape == (2, 32, 16, 16)
    assert torch.equal(first, second)
    assert torch.equal(first, params(x, context))


def test_spatial_cross_attention_matches_a_manual_single_head_computation() -> None:
    torch.manual_seed(2)
    attn = SpatialCrossAttention(channels=12, context_dim=20)
    x, context = _randn(2, 12, 3, 5), _randn(2, 7, 20, seed=1)
    tokens = x.double().flatten(2).transpose(1, 2)  # (B, HW, C), row-major over (H, W)
    q, k = _linear64(attn.to_q, tokens), _linear64(attn.to_k, context)
    v = _linear64(attn.to_v, context)
    probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(20), dim=-1)  # scale 1/sqrt(D)
    out = _linear64(attn.to_out, probs @ v).transpose(1, 2).reshape(2, 12, 3, 5)
    torch.testing.assert_close(attn.double()(x.double(), context.double()), out)
    assert (attn.heads, attn.num_heads, attn.d_head) == (1, 1, 20)


def test_functional_cross_attention_calls_its_linear_modules_so_hooks_see_them() -> None:
    attn = SpatialCrossAttention(channels=8, context_dim=16)
    seen: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    handles = [
        getattr(attn, name).register_forward_hook(
            lambda _m, args, out, name=name: seen.append((name, tuple(args[0].shape), out.shape))
        )
        for name in ("to_q", "to_k", "to_v", "to_out")
    ]
    try:
        attn(_randn(1, 8, 4, 6), _randn(1, 77, 16, seed=1))
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [
        ("to_q", (1, 24, 8), (1, 24, 16)),
        ("to_k", (1, 77, 16), (1, 77, 16)),
        ("to_v", (1, 77, 16), (1, 77, 16)),
        ("to_out", (1, 24, 16), (1, 24, 8)),
    ]


@pytest.mark.parametrize(
    ("x_shape", "context_shape", "match"),
    [
        ((2, 64, 320), (2, 77, 768), r"x has shape \(2, 64, 320\), expected a feature map"),
        ((2, 64, 8, 8), (2, 77, 768), r"x has 64 channels .* to_q expects 320"),
        ((2, 320, 8, 8), (2, 77, 1024), r"context has width 1024 .* to_k expects 768"),
        ((2, 320, 8, 8), (1, 77, 768), r"x has batch 2 .* context has batch 1"),
    ],
)
def test_spatial_cross_attention_refuses_mismatched_inputs_up_front(
    x_shape: tuple[int, ...], context_shape: tuple[int, ...], match: str
) -> None:
    with torch.device("meta"):
        attn = SpatialCrossAttention(320, 768)
        x, context = torch.empty(x_shape), torch.empty(context_shape)
    with pytest.raises(InputShapeError, match=match):
        attn(x, context)


def test_timestep_embedding_is_cos_then_sin_of_scaled_timesteps() -> None:
    emb = timestep_embedding(torch.tensor([0, 10]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))
    assert timestep_embedding(torch.tensor(3), 7).shape == (1, 7)


def test_res_block_changes_channels_through_a_1x1_skip() -> None:
    block = ResBlock(16, 32, time_emb_dim=24)
    assert isinstance(block.skip, nn.Conv2d)
    assert block(_randn(2, 16, 6, 10), _randn(2, 24, seed=1)).shape == (2, 32, 6, 10)
    assert isinstance(ResBlock(16, 16, 24).skip, nn.Identity)


def test_cross_attn_res_block_round_trips_a_non_square_map_row_major() -> None:
    torch.manual_seed(3)
    block = CrossAttnResBlock(channels=32, time_emb_dim=24, context_dim=40, num_heads=8)
    x, t_emb, context = _randn(2, 32, 24, 40), _randn(2, 24, seed=1), _randn(2, 77, 40, seed=2)
    seen: list[tuple[int, ...]] = []
    handle = block.cross_attn.register_forward_hook(
        lambda _m, args, _out: seen.append(tuple(args[0].shape))
    )
    try:
        out = block(x, t_emb, context)
    finally:
        handle.remove()
    assert out.shape == (2, 32, 24, 40)
    assert seen == [(2, 24 * 40, 32)]
    h = block.res(x, t_emb)
    tokens = block.norm(h).flatten(2).transpose(1, 2)
    expected = h + block.cross_attn(tokens, context).transpose(1, 2).reshape(2, 32, 24, 40)
    torch.testing.assert_close(out, expected)


def test_text_encoder_gives_77_by_768_per_prompt_on_meta() -> None:
    with torch.device("meta"):
        encoder = SimplifiedCLIPTextEncoder()
        tokens = torch.empty(2, 77, dtype=torch.long)
    assert encoder(tokens).shape == (2, 77, 768)


def test_small_text_encoder_runs_on_cpu_in_eval_mode() -> None:
    torch.manual_seed(0)
    encoder = SimplifiedCLIPTextEncoder(d_model=32, num_layers=2, nhead=4, dim_feedforward=64)
    tokens = torch.randint(0, 49408, (2, 77), generator=_gen())
    out = encoder.eval()(tokens)
    assert out.shape == (2, 77, 32)
    assert torch.equal(out, encoder(tokens))


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (torch.zeros(2, 78, dtype=torch.long), r"78 tokens .* only 77 positions; truncate"),
        (torch.zeros(2, 77), r"dtype torch.float32, expected integer token ids"),
        (torch.zeros(77, dtype=torch.long), r"shape \(77,\), expected \(B, S\)"),
    ],
)
def test_text_encoder_refuses_token_tensors_it_cannot_embed(tokens: Tensor, match: str) -> None:
    encoder = SimplifiedCLIPTextEncoder(d_model=16, num_layers=1, nhead=2, dim_feedforward=32)
    with pytest.raises(InputShapeError, match=match):
        encoder(tokens)


def test_reference_model_on_meta_at_256_has_seed_002_feature_map() -> None:
    with torch.device("meta"):
        model = ReferenceModel()
        x = torch.empty(1, 320, 32, 32)
        t, tokens = torch.empty(1, dtype=torch.long), torch.empty(1, 77, dtype=torch.long)
    seen: list[tuple[int, ...]] = []
    handle = model.block.cross_attn.to_q.register_forward_hook(
        lambda _m, _args, out: seen.append(tuple(out.shape))
    )
    try:
        assert model(x, t, tokens).shape == (1, 320, 32, 32)
    finally:
        handle.remove()
    assert seen == [(1, 1024, 320)]
    heads = (model.block.heads, model.block.cross_attn.d_head, model.spatial_attn.heads)
    assert heads == (8, 40, 1)


def test_small_reference_model_runs_on_cpu_on_a_non_square_map() -> None:
    torch.manual_seed(0)
    model = ReferenceModel(
        channels=32, context_dim=64, heads=4, time_emb_dim=128, text_layers=1, text_heads=4
    ).eval()
    x, t = _randn(2, 32, 3, 5), torch.tensor([10, 999])
    tokens = torch.randint(0, 49408, (2, 77), generator=_gen())
    out = model(x, t, tokens)
    assert out.shape == (2, 32, 3, 5)
    assert torch.isfinite(out).all()
    assert torch.equal(model(x, torch.tensor(10), tokens)[0], out[0])


def test_reference_model_refuses_mismatched_batches() -> None:
    with torch.device("meta"):
        model = ReferenceModel(
            channels=32, context_dim=64, heads=4, time_emb_dim=64, text_layers=1, text_heads=4
        )
        x, t = torch.empty(2, 32, 4, 4), torch.empty(3, dtype=torch.long)
        tokens = torch.empty(2, 77, dtype=torch.long)
    with pytest.raises(InputShapeError, match=r"t \(3,\) .* must share batch 2"):
        model(x, t, tokens)
