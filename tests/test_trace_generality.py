"""The attention people run, traced right or refused by name: joint attention (SD3, Flux),
patch grids (PixArt), added keys and values, IP-Adapter branches, fused and Custom Diffusion
projections, transformers' CLIP and T5, timm's fused qkv, einsum. Expected values come from
each model's config (tests/facts.py); each model is left bit-for-bit as it was."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import shapetrace
from shapetrace.journey import Journey
from tests import facts, tiny_models
from tests._helpers import hook_count, processors, same_state, state_snapshot


def first(out):
    """The main tensor of a model's output (diffusers' ``.sample``, a tuple's first item)."""
    if isinstance(out, tuple):
        return out[0]
    return getattr(out, "sample", getattr(out, "last_hidden_state", out))


def traced_unchanged(model: nn.Module, args, kwargs, **options) -> Journey:
    """Trace one forward and check the model is as it was: same output, weights, processors,
    no hook left."""
    before, procs = state_snapshot(model), processors(model)
    with torch.no_grad():
        plain = model(*args, **kwargs)
        with shapetrace.trace(model, **options) as journey:
            traced = model(*args, **kwargs)
    assert torch.equal(first(plain), first(traced))
    assert hook_count(model) == 0 and torch._C._len_torch_function_stack() == 0
    assert same_state(model, before) and processors(model) == procs
    return journey


def assert_matches(journey: Journey, expected: list[facts.Layer], batch: int) -> None:
    assert [x.name for x in journey.layers] == [e.name for e in expected]
    assert not journey.not_understood and not journey.violations
    for layer, fact in zip(journey.layers, expected):
        assert (layer.kind, layer.resolution, layer.heads, layer.head_dim) == (
            fact.kind,
            fact.grid,
            fact.heads,
            fact.head_dim,
        ), layer.name
        for stage, shape in fact.stage_shapes(batch).items():
            assert layer.shape(stage) == shape, (layer.name, stage)


def test_sd3_joint_attention_is_joint_image_first_with_its_cross_block() -> None:
    model, args, kwargs, config = tiny_models.sd3(batch=2, height=128, width=128, text=7)
    journey = traced_unchanged(model, args, kwargs)
    assert_matches(journey, facts.sd3_layers(config, 128, 128, text=7), batch=2)
    layer = journey.cross[0]
    assert [(s.source, s.tokens) for s in layer.segments["key"]] == [("hidden", 64), ("context", 7)]
    assert layer.shape("context") == (2, 7, 16) and layer.shape("context_output") == (2, 7, 16)
    assert layer.stage("cross_probs").derived


def test_flux_double_and_single_stream_are_joint_text_first_on_the_ids_grid() -> None:
    model, args, kwargs, config = tiny_models.flux(batch=1, rows=4, cols=6, text=5)
    journey = traced_unchanged(model, args, kwargs)  # no grid hint: read from img_ids
    assert_matches(journey, facts.flux_layers(config, 4 * 16, 6 * 16, text=5), batch=1)
    single = journey.layer("single_transformer_blocks.0.attn")
    assert [(s.source, s.tokens) for s in single.segments["query"]] == [
        ("context", 5),
        ("hidden", 24),
    ]
    assert single.place == "single" and single.shape("cross_probs") == (1, 2, 24, 5)


def test_pixart_grid_comes_from_the_patch_embedding() -> None:
    model, args, kwargs, config = tiny_models.pixart(batch=1, height=64, width=64, text=6)
    journey = traced_unchanged(model, args, kwargs)
    assert_matches(journey, facts.pixart_layers(config, 64, 64, text=6), batch=1)


def test_added_kv_unets_are_joint_keys_text_then_image_and_not_refused() -> None:
    model, args, kwargs, config = tiny_models.added_kv(batch=2, side=16, text=5)
    journey = traced_unchanged(model, args, kwargs)
    assert not journey.not_understood and not journey.violations
    heads = config["block_out_channels"][1] // config["attention_head_dim"]
    for layer in journey.layers:
        n = layer.resolution[0] * layer.resolution[1]
        c = config["block_out_channels"][1]
        assert layer.kind == "joint" and layer.heads == heads
        assert [(s.source, s.tokens) for s in layer.segments["key"]] == [
            ("context", 5),
            ("hidden", n),
        ]
        assert layer.shape("context_key") == (2, 5, c) and layer.shape("key") == (2, n, c)
        assert layer.shape("scores") == (2, heads, n, n + 5)
        assert layer.shape("cross_probs") == (2, heads, n, 5)
    assert {x.resolution for x in journey.layers} == {(8, 8)}  # a 16x16 input, halved once


def _ip_adapter_unet(tokens: int = 4):
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    from shapetrace.models import build_model

    built = build_model("tiny", device="cpu", seed=0)
    unet = built.module
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(
        [ImageProjection(image_embed_dim=24, cross_attention_dim=64, num_image_text_embeds=tokens)]
    )
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
    procs = {}
    for name in unet.attn_processors:
        layer = unet.get_submodule(name.rsplit(".processor", 1)[0])
        width = layer.to_q.out_features
        procs[name] = (
            IPAdapterAttnProcessor2_0(width, 64, num_tokens=(tokens,), scale=1.0)
            if name.endswith("attn2.processor")
            else AttnProcessor2_0()
        )
    unet.set_attn_processor(procs)
    args, kwargs = built.inputs(64, 64, 2)
    kwargs["added_cond_kwargs"] = {"image_embeds": [torch.randn(2, 1, 24)]}
    return unet, args, kwargs


def test_ip_adapter_image_prompt_attention_is_a_named_branch() -> None:
    unet, args, kwargs = _ip_adapter_unet(tokens=4)
    journey = traced_unchanged(unet, args, kwargs)
    for layer in journey.cross:
        (branch,) = layer.branches
        b, h, n, d = layer.shape("query_heads")
        assert branch.name == "ip" and branch.kind == "cross"
        assert branch.shape("key_heads") == (b, h, 4, d) and branch.shape("scores") == (b, h, n, 4)
        assert layer.shape("scores") == (b, h, n, 77)  # the text attention is the layer's own
    assert all(not x.branches for x in journey.self_attention)


@pytest.fixture(scope="module")
def plain_tiny() -> tuple[nn.Module, tuple, dict, Journey]:
    from shapetrace.models import build_model

    built = build_model("tiny", device="cpu", seed=0)
    args, kwargs = built.inputs(64, 64, 2)
    with torch.no_grad(), shapetrace.trace(built.module) as journey:
        built.module(*args, **kwargs)
    return built.module, args, kwargs, journey


def _contract(journey: Journey) -> list[tuple]:
    return [
        (
            x.name,
            x.kind,
            x.resolution,
            x.heads,
            x.head_dim,
            tuple((s.name, s.shape) for s in x.stages),
        )
        for x in journey.layers
    ]


def _fresh_tiny(change: Callable[[nn.Module], None]):
    from shapetrace.models import build_model

    built = build_model("tiny", device="cpu", seed=0)
    change(built.module)
    args, kwargs = built.inputs(64, 64, 2)
    return built.module, args, kwargs


def test_fused_projections_give_the_unfused_journey(plain_tiny) -> None:
    unet, args, kwargs = _fresh_tiny(lambda m: m.fuse_qkv_projections())
    journey = traced_unchanged(unet, args, kwargs)
    assert _contract(journey) == _contract(plain_tiny[3])
    attn1, attn2 = journey.layers[:2]
    assert "to_qkv" in attn1.stage("query").op and "piece 1 of 3" in attn1.stage("query").op
    assert "to_kv" in attn2.stage("value").op and "piece 2 of 2" in attn2.stage("value").op


def test_custom_diffusion_processors_keep_cross_layers_cross(plain_tiny) -> None:
    from diffusers.models.attention_processor import (
        AttnProcessor2_0,
        CustomDiffusionAttnProcessor2_0,
    )

    def custom(unet: nn.Module) -> None:
        procs = {}
        for name in unet.attn_processors:
            width = unet.get_submodule(name.rsplit(".processor", 1)[0]).to_q.out_features
            procs[name] = (
                CustomDiffusionAttnProcessor2_0(True, False, width, 64)
                if name.endswith("attn2.processor")
                else AttnProcessor2_0()
            )
        unet.set_attn_processor(procs)

    journey = traced_unchanged(*_fresh_tiny(custom))
    assert [x.kind for x in journey.layers] == [x.kind for x in plain_tiny[3].layers]
    assert "to_k_custom_diffusion" in journey.cross[0].stage("key").op


@pytest.mark.parametrize("slice_size", [1, 3, 5, 7, 8])
def test_sliced_attention_of_any_slice_size_gives_the_whole_journey(plain_tiny, slice_size) -> None:
    unet, args, kwargs = _fresh_tiny(lambda m: m.set_attention_slice(slice_size))
    journey = traced_unchanged(unet, args, kwargs)  # batch 2 x 8 heads: 16 rows
    assert _contract(journey) == _contract(plain_tiny[3])
    assert not journey.violations
    assert f"in slices of {slice_size} rows" in journey.layers[0].stage("scores").layout


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_and_records_the_same_shapes(plain_tiny, dtype) -> None:
    unet, args, kwargs, plain = plain_tiny
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype), shapetrace.trace(unet) as journey:
        unet(*args, **kwargs)
    assert _contract(journey) == _contract(plain)
    assert hook_count(unet) == 0


def test_channels_last_and_inference_mode_trace_the_same_journey(plain_tiny) -> None:
    unet, args, kwargs, plain = plain_tiny
    unet = unet.to(memory_format=torch.channels_last)
    sample = args[0].to(memory_format=torch.channels_last)
    with torch.inference_mode(), shapetrace.trace(unet) as journey:
        unet(sample, *args[1:], **kwargs)
    assert _contract(journey) == _contract(plain)


def test_gradient_checkpointing_recomputes_are_left_out_and_counted(plain_tiny) -> None:
    unet, args, kwargs = _fresh_tiny(lambda m: (m.enable_gradient_checkpointing(), m.train()))
    latents = args[0].clone().requires_grad_(True)
    with shapetrace.trace(unet) as journey:
        unet(latents, *args[1:], **kwargs).sample.sum().backward()
    assert latents.grad is not None and hook_count(unet) == 0
    assert _contract(journey) == _contract(plain_tiny[3])
    assert journey.skipped == {"recomputes": 32}


def test_calls_from_another_thread_are_never_mixed_in(plain_tiny) -> None:
    import threading

    unet, args, kwargs, plain = plain_tiny
    started = threading.Event()

    def other() -> None:
        started.set()
        with torch.no_grad():
            for _ in range(3):
                unet(*args, **kwargs)

    worker = threading.Thread(target=other)
    with torch.no_grad(), shapetrace.trace(unet) as journey:
        worker.start()
        started.wait()
        unet(*args, **kwargs)
        worker.join()
    assert _contract(journey) == _contract(plain)
    assert journey.skipped == {"other_threads": 96}


def test_clip_text_encoder_layers_are_found_and_self() -> None:
    model, args, kwargs, config = tiny_models.clip_text()
    journey = traced_unchanged(model, args, kwargs)
    expected = facts.clip_text_layers(config)
    assert [x.name.removeprefix("text_model.") for x in journey.layers] == [
        e.name for e in expected
    ]
    for layer, fact in zip(journey.layers, expected):
        assert (layer.kind, layer.place, layer.resolution, layer.heads) == (
            "self",
            "text",
            None,
            fact.heads,
        )
        for stage, shape in fact.stage_shapes(1).items():
            assert layer.shape(stage) == shape


def test_t5_attention_is_found_and_its_unscaled_scores_are_not_a_violation() -> None:
    model, args, kwargs, config = tiny_models.t5_encoder(tokens=12)
    journey = traced_unchanged(model, args, kwargs)
    assert [x.name for x in journey.layers] == [
        f"encoder.block.{i}.layer.0.SelfAttention" for i in range(config["num_layers"])
    ]
    for layer in journey.layers:
        assert layer.kind == "self" and layer.heads == config["num_heads"]
        assert layer.shape("scores") == (1, config["num_heads"], 12, 12)
        assert layer.scale == 1.0 and layer.ok  # T5 folds the scale into its init: declared 1.0


class TimmAttention(nn.Module):
    """timm's ViT attention: one fused qkv, reshaped to (3, B, H, N, d) and unbound."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = (
            self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class EinsumCross(nn.Module):
    """Cross-attention written with einsum in (B, N, H, d) layout."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(8, 8), nn.Linear(6, 8), nn.Linear(6, 8)
        self.to_out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, 2, 4)
        k, v = self.to_k(context).view(b, -1, 2, 4), self.to_v(context).view(b, -1, 2, 4)
        w = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(4)
        return self.to_out(torch.einsum("bhnm,bmhd->bnhd", w.softmax(-1), v).reshape(b, n, 8))


def test_timm_fused_qkv_is_read_as_three_projections() -> None:
    model = nn.Sequential(TimmAttention(32, 4)).eval()
    journey = traced_unchanged(model, (torch.randn(2, 10, 32),), {})
    (layer,) = journey.layers
    assert (layer.kind, layer.heads, layer.head_dim) == ("self", 4, 8)
    assert [layer.shape(s) for s in ("query", "key", "value")] == [(2, 10, 32)] * 3
    assert layer.shape("scores") == (2, 4, 10, 10) and layer.ok


def test_einsum_attention_is_read_from_its_equation() -> None:
    journey = traced_unchanged(
        EinsumCross().eval(), (torch.randn(1, 5, 8), torch.randn(1, 3, 6)), {}
    )
    (layer,) = journey.layers
    assert layer.kind == "cross" and layer.shape("scores") == (1, 2, 5, 3)
    assert layer.stage("query_heads").layout == "(B, T, H, d)" and layer.ok


class Opaque(nn.Module):
    """Attention whose scores come from an elementwise product and sum: no q·kᵀ op to see."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        weights = (q.unsqueeze(2) * k.unsqueeze(1)).sum(-1).softmax(-1)
        return self.to_out(weights @ v)


def test_attention_it_cannot_read_is_listed_by_name_not_guessed() -> None:
    journey = traced_unchanged(Opaque().eval(), (torch.randn(1, 5, 8),), {})
    assert journey.layers == []
    (entry,) = journey.not_understood
    assert entry.name == "Opaque" and "no score computation was seen" in entry.reason
