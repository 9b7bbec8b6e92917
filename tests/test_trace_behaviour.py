"""What the tracer promises beyond shapes: cleanup, identical output, loud failures, monitors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import shapetrace
from shapetrace.errors import InputShapeError, NoAttentionLayersError, ShapeTraceError
from shapetrace.models import build_model
from shapetrace.reference import CrossAttention, ReferenceModel, SpatialCrossAttention
from tests._helpers import hook_count, processors, same_state, state_snapshot


@pytest.fixture(scope="module")
def tiny():
    built = build_model("tiny", device="cpu", seed=0)
    args, kwargs = built.inputs(64, 64, batch=2, seed=1)
    return built.module, args, kwargs


def test_tracing_leaves_the_tiny_unet_bit_identical(tiny) -> None:
    unet, args, kwargs = tiny
    before = state_snapshot(unet)
    procs = processors(unet)
    with torch.no_grad():
        plain = unet(*args, **kwargs).sample
        with shapetrace.trace(unet) as journey:
            traced = unet(*args, **kwargs).sample
        after = unet(*args, **kwargs).sample
    assert len(journey.layers) == 32
    assert torch.equal(plain, traced) and torch.equal(plain, after)
    assert hook_count(unet) == 0
    assert same_state(unet, before) and processors(unet) == procs
    assert all(layer.ok for layer in journey.layers), journey.violations


def test_a_forward_that_raises_keeps_its_type_names_the_layer_and_leaves_no_hook(tiny) -> None:
    unet, args, kwargs = tiny
    bad = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2

    class PlantedError(RuntimeError):
        pass

    def boom(*_a, **_k):
        raise PlantedError("planted failure")

    handle = bad.to_v.register_forward_hook(boom)
    try:
        with pytest.raises(PlantedError, match="planted failure") as caught:
            with torch.no_grad(), shapetrace.trace(unet):
                unet(*args, **kwargs)
    finally:
        handle.remove()
    (note,) = caught.value.__notes__
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn2" in note
    assert re.search(r"input \(2, 16, 64\), context \(2, 77, 64\)", note)
    assert hook_count(unet) == 0
    assert torch._C._len_torch_function_stack() == 0
    with torch.no_grad(), shapetrace.trace(unet) as journey:
        unet(*args, **kwargs)
    assert len(journey.layers) == 32


def test_keyboard_interrupt_mid_forward_leaves_no_hook_or_mode(tiny) -> None:
    unet, args, kwargs = tiny
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn2

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    handle = attn.to_q.register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), torch.no_grad(), shapetrace.trace(unet):
            unet(*args, **kwargs)
    finally:
        handle.remove()
    assert hook_count(unet) == 0
    assert torch._C._len_torch_function_stack() == 0


def test_nested_and_repeated_tracers_record_the_same_journey(tiny) -> None:
    unet, args, kwargs = tiny
    with torch.no_grad(), shapetrace.trace(unet) as outer, shapetrace.trace(unet) as inner:
        unet(*args, **kwargs)
    assert [s.shape for l in outer for s in l.stages] == [s.shape for l in inner for s in l.stages]
    with torch.no_grad(), shapetrace.trace(unet) as again:
        unet(*args, **kwargs)
        unet(*args, **kwargs)
    assert len(again.layers) == 32  # one record per layer and input signature
    assert {(layer.call, layer.calls) for layer in again.layers} == {(0, 2)}
    with torch.no_grad(), shapetrace.trace(unet, every_call=True) as every:
        unet(*args, **kwargs)
        unet(*args, **kwargs)
    assert len(every.layers) == 64 and {layer.call for layer in every.layers} == {0, 1}
    assert hook_count(unet) == 0


def test_a_model_without_attention_fails_loudly() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU())
    with pytest.raises(NoAttentionLayersError, match=r"Sequential holds no attention layer"):
        with shapetrace.trace(model):
            pass


def test_a_block_that_runs_no_attention_layer_fails_loudly() -> None:
    attn = CrossAttention(16, 8, num_heads=2)
    with pytest.raises(NoAttentionLayersError, match=r"ran none of the 1 attention layers"):
        with shapetrace.trace(attn):
            pass
    assert hook_count(attn) == 0


def test_reference_cross_attention_journey_follows_seed_000() -> None:
    attn = CrossAttention(query_dim=512, context_dim=768, num_heads=8)
    x, ctx = torch.randn(2, 64, 512), torch.randn(2, 77, 768)
    with shapetrace.trace(attn) as journey:
        out = attn(x, ctx)
    (layer,) = journey.layers
    assert out.shape == (2, 64, 512)
    assert layer.kind == "cross" and layer.heads == 8 and layer.head_dim == 64
    assert layer.shape("scores") == (2, 8, 64, 77)
    assert layer.stage("query_heads").op == "to_q→view→transpose"
    assert layer.stage("scores").op == "matmul→div · 0.125"  # the seed divides by sqrt(64)
    assert layer.stage("probs").op == "softmax(dim=-1)"
    assert layer.resolution is None  # tokens with no feature map: no grid to claim
    assert layer.ok


def test_reference_model_traces_text_self_attention_and_both_cross_layers() -> None:
    with torch.device("meta"):
        model = ReferenceModel(text_layers=2)
    x = torch.empty(1, 320, 24, 40, device="meta")
    t = torch.zeros(1, device="meta")
    tokens = torch.zeros(1, 77, dtype=torch.long, device="meta")
    with shapetrace.trace(model) as journey:
        model(x, t, tokens)
    kinds = [(layer.place, layer.kind) for layer in journey.layers]
    assert kinds == [("text", "self")] * 2 + [("model", "cross")] * 2
    text = journey.layers[0]
    assert text.processor == "multi_head_attention_forward"
    assert text.shape("scores") == (1, 12, 77, 77) and text.stage("scores").derived
    block, spatial = journey.layers[2], journey.layers[3]
    assert block.resolution == (24, 40) and block.shape("scores") == (1, 8, 960, 77)
    assert spatial.resolution == (24, 40)
    assert spatial.shape("tokens") == (1, 960, 320)
    assert spatial.shape("query") == (1, 960, 768)  # seed 001 projects q to the context width
    assert spatial.shape("output") == (1, 320, 24, 40)


class _Planted(nn.Module):
    """Seed 000's module with a planted bug chosen by name."""

    def __init__(self, bug: str) -> None:
        super().__init__()
        self.heads, self.bug = 4, bug
        self.to_q, self.to_k, self.to_v, self.to_out = (
            nn.Linear(32, 32), nn.Linear(16, 32), nn.Linear(16, 32), nn.Linear(32, 32))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        q = self.to_q(x).view(b, -1, h, 8).transpose(1, 2)
        k = self.to_k(context).view(b, -1, h, 8).transpose(1, 2)
        v = self.to_v(context).view(b, -1, h, 8).transpose(1, 2)
        scale = {"inner_scale": 32**-0.5, "no_scale": 1.0}.get(self.bug, 8**-0.5)
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        probs = scores.softmax(dim=-2 if self.bug == "query_softmax" else -1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, -1, 32)
        return self.to_out(out)


@pytest.mark.parametrize(
    ("bug", "check", "detail"),
    [
        ("query_softmax", "softmax_axis", r"axis -2 \(size 5\).*the 7 keys"),
        ("inner_scale", "scale", r"1/sqrt\(inner width 32\)"),
        ("no_scale", "scale", r"not scaled"),
    ],
)
def test_runtime_monitors_flag_a_planted_bug(bug: str, check: str, detail: str) -> None:
    module = _Planted(bug)
    with shapetrace.trace(module) as journey:
        module(torch.randn(2, 5, 32), torch.randn(2, 7, 16))
    (layer,) = journey.layers
    failed = {c.name: c.detail for c in layer.checks if not c.ok}
    assert check in failed, layer.checks
    assert re.search(detail, failed[check]), failed[check]


def test_monitors_pass_a_correct_module_and_flag_nan_output() -> None:
    module = _Planted("none")
    with shapetrace.trace(module) as journey:
        module(torch.randn(2, 5, 32), torch.randn(2, 7, 16))
    assert journey.layers[0].ok
    nan = torch.full((2, 5, 32), float("nan"))
    with shapetrace.trace(module) as journey:  # a signature seen before: the output is checked
        module(nan, torch.randn(2, 7, 16))
    failed = {c.name for c in journey.layers[0].checks if not c.ok}
    assert failed == {"finite"} and journey.layers[0].checked == 1
    with shapetrace.trace(module, monitor_every=1) as journey:  # recorded: every check runs
        module(nan, torch.randn(2, 7, 16))
    failed = {c.name for c in journey.layers[0].checks if not c.ok}
    assert {"finite", "finite_input", "rows_sum_to_one"} <= failed


@pytest.mark.parametrize(
    ("x", "ctx", "message"),
    [
        ((1, 5, 32), (1, 7, 24), r"context \(1, 7, 24\) of width 24, but to_k takes 16"),
        ((5, 32), (1, 7, 16), r"input \(5, 32\) of rank 2"),
        ((0, 5, 32), (0, 7, 16), r"empty batch"),
        ((2, 5, 32), (1, 7, 16), r"input batch 2 .* differs from context batch 1"),
        ((1, 5, 30), (1, 7, 16), r"width 30, but to_q takes 32"),
    ],
)
def test_bad_inputs_get_a_clear_error_naming_the_layer(x, ctx, message) -> None:
    module = _Planted("none")
    with pytest.raises(InputShapeError, match=message) as info:
        with shapetrace.trace(module):
            module(torch.randn(*x), torch.randn(*ctx))
    assert "_Planted" in str(info.value)
    assert hook_count(module) == 0


def test_mixed_dtypes_get_a_clear_error() -> None:
    module = SpatialCrossAttention(8, 16)
    with pytest.raises(ShapeTraceError, match=r"context .* is torch.float16 but the weights"):
        with shapetrace.trace(module):
            module(torch.randn(1, 8, 4, 4), torch.randn(1, 5, 16, dtype=torch.float16))


def test_trace_model_rejects_cuda_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputShapeError, match=r"no CUDA device"):
        shapetrace.trace_model("tiny", height=64, width=64, device="cuda")


@pytest.mark.cuda
def test_tiny_unet_traces_on_cuda_with_identical_output() -> None:
    built = build_model("tiny", device="cuda", seed=0)
    args, kwargs = built.inputs(64, 96, batch=2)
    with torch.no_grad():
        plain = built.module(*args, **kwargs).sample
        with shapetrace.trace(built.module) as journey:
            traced = built.module(*args, **kwargs).sample
    assert torch.equal(plain, traced)
    assert journey.layers[0].device == "cuda" and all(layer.ok for layer in journey.layers)
    assert journey.cross[0].resolution == (8, 12)


class _Refuses:
    def on_attention(self, call) -> None:
        q = tuple(call.query_heads.shape)
        raise ShapeTraceError(f"probe refuses {call.layer.name} with q {q}")


def test_an_exception_raised_by_a_probe_stops_the_forward_and_cleans_up(tiny) -> None:
    unet, args, kwargs = tiny
    refused = r"probe refuses down_blocks\.0.*attn1 with q \(2, 8, "
    with pytest.raises(ShapeTraceError, match=refused):
        with torch.no_grad(), shapetrace.trace(unet, probes=[_Refuses()]):
            unet(*args, **kwargs)
    assert hook_count(unet) == 0 and torch._C._len_torch_function_stack() == 0


def test_probes_see_probabilities_that_sum_to_one_over_the_keys(tiny) -> None:
    unet, args, kwargs = tiny
    seen = []

    class Collect:
        def wants(self, layer) -> bool:
            return layer.kind == "cross"

        def on_attention(self, call) -> None:
            probs = call.compute_probs()
            cond = call.compute_probs(rows=torch.tensor([1]))  # the conditional row alone
            torch.testing.assert_close(cond, probs[1:2], rtol=0, atol=1e-6)
            seen.append((call.layer.name, probs))

    with torch.no_grad(), shapetrace.trace(unet, probes=[Collect()]):
        out = unet(*args, **kwargs).sample
    assert len(seen) == 16 and all(name.endswith("attn2") for name, _ in seen)
    for _, probs in seen:
        assert probs.shape[:2] == (2, 8) and probs.shape[-1] == 77
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    with torch.no_grad():
        assert torch.equal(out, unet(*args, **kwargs).sample)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_finiteness_monitor_is_exact_even_when_the_sum_overflows(dtype) -> None:
    from shapetrace.tracing._monitors import all_finite

    big = torch.full((4096,), torch.finfo(dtype).max, dtype=dtype)  # finite, sum overflows
    assert all_finite(big)
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.ones(7, 5, dtype=dtype)
        x[3, 2] = bad
        assert not all_finite(x)
    mixed = torch.tensor([float("inf"), float("-inf")], dtype=dtype)  # sums to NaN
    assert not all_finite(mixed)


def test_query_chunked_attention_reports_one_scale_not_one_per_chunk(tiny) -> None:
    from diffusers.models.attention_processor import SlicedAttnProcessor

    from tests.mutants import QueryChunked

    module = QueryChunked(32, 16, 4)
    with shapetrace.trace(module) as journey:
        module(torch.randn(2, 23, 32), torch.randn(2, 7, 16))
    (layer,) = journey.layers
    assert layer.scale == pytest.approx(8**-0.5) and layer.ok, layer.checks

    unet, args, kwargs = tiny
    procs = unet.attn_processors
    unet.set_attn_processor(SlicedAttnProcessor(slice_size=2))  # 2 of the 16 (batch x heads)
    try:
        with torch.no_grad(), shapetrace.trace(unet) as journey:
            unet(*args, **kwargs)
    finally:
        unet.set_attn_processor(procs)
    assert not journey.violations, journey.violations
    layer = journey.cross[0]
    assert layer.processor == "SlicedAttnProcessor"
    assert layer.scale == pytest.approx(layer.head_dim**-0.5)
    assert layer.stage("scores").raw_shape == (2, 64, 77)  # the first slice, as it ran
