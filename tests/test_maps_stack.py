"""Calls of one shape summed as one stack: the same maps as call by call and as a float64
reference, only where it is allowed, within its byte bound, and counted by the estimate."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import shapetrace
from shapetrace.maps import AttentionStore, _summing, estimate_memory
from shapetrace.models import build_model
from shapetrace.tracing import AttentionCall


@dataclass
class Layer:
    name: str
    place: str = "down"
    resolution: tuple[int, int] = (4, 4)
    kind: str = "cross"


def make_call(layer: Layer, seed: int, *, heads: int = 2, d: int = 8, m: int = 7, **kw):
    """q and k as a diffusers processor leaves them: views of (B, T, H*d) projection outputs."""
    g = torch.Generator().manual_seed(seed)
    n = layer.resolution[0] * layer.resolution[1]
    q = torch.randn(2, n, heads * d, generator=g).view(2, n, heads, d).transpose(1, 2)
    k = torch.randn(2, m, heads * d, generator=g).view(2, m, heads, d).transpose(1, 2)
    return AttentionCall(layer, q, k, d**-0.5, **kw)  # type: ignore[arg-type]


def reference(call: AttentionCall, row: int) -> torch.Tensor:
    """float64 softmax(q kᵀ · scale) of one batch row, (H, N, M)."""
    q, k = call.query_heads[row].double(), call.key_heads[row].double()
    return (q @ k.transpose(-1, -2) * call.scale).softmax(dim=-1)


LAYERS = [Layer("d0"), Layer("d1"), Layer("m0", "mid", (2, 2)), Layer("u0", "up"),
          Layer("u1", "up"), Layer("u2", "up")]


@pytest.fixture
def stacks(monkeypatch):
    """How many calls each stacked product took."""
    sizes: list[int] = []
    real = AttentionCall.stacked_probs

    def counted(calls, dtype=torch.float32, rows=None):
        sizes.append(len(calls))
        return real(calls, dtype, rows)

    monkeypatch.setattr(AttentionCall, "stacked_probs", staticmethod(counted))
    return sizes


@pytest.mark.parametrize("detail", ["resolution", "layer", "head"])
def test_stacked_sums_equal_call_by_call_sums_and_a_float64_reference(stacks, detail) -> None:
    calls = [make_call(layer, seed=i) for i, layer in enumerate(LAYERS)]
    stacked = AttentionStore.for_batch(1, guidance=True, detail=detail)
    direct = AttentionStore.for_batch(1, guidance=True, detail=detail, defer=False)
    for call in calls:
        stacked.on_attention(call)
        direct.on_attention(call)
    stacked.end_forward()
    # runs of four: (d0, d1, m0, u0) stacks d0, d1 and u0; (u1, u2) stacks both
    assert stacks == [3, 2]
    assert stacked.entries.keys() == direct.entries.keys()
    for key, entry in direct.entries.items():
        got = stacked.entries[key]
        torch.testing.assert_close(got.total, entry.total, rtol=1e-6, atol=1e-7)
        assert (got.count, got.calls, got.layers) == (entry.count, entry.calls, entry.layers)
        mine = [c for c in calls if c.layer.place == key.place
                and (not key.layer or c.layer.name == key.layer)]
        want = sum(reference(c, row=1) for c in mine)  # the conditional row, (H, N, M)
        want = want[None] if detail == "head" else want.sum(dim=0)[None]
        torch.testing.assert_close(got.total.double(), want, rtol=1e-5, atol=1e-6)


def test_only_calls_of_nothing_but_q_and_k_of_one_shape_are_stacked(stacks) -> None:
    plain = make_call(Layer("d0"), seed=0)
    mask = torch.zeros(1, 1, 16, 7)
    masked = make_call(Layer("d1"), seed=1, mask=mask)
    sliced = make_call(Layer("d2"), seed=2, key_tokens=slice(0, 7))
    longer = make_call(Layer("d3"), seed=3, m=9)
    assert plain.stack_key() is not None and longer.stack_key() != plain.stack_key()
    assert masked.stack_key() is None and sliced.stack_key() is None
    store = AttentionStore.for_batch(1, guidance=True, kinds=("cross",))
    for call in (plain, masked, sliced, make_call(Layer("d4"), seed=4)):
        store.on_attention(call)
    store.end_forward()
    assert stacks == [2]  # d0 with d4; the masked and the sliced call alone
    assert store.entries[("down", "cross", (4, 4), "")].calls == 4


def test_a_store_keeping_gradients_never_stacks(stacks) -> None:
    store = AttentionStore.for_batch(1, guidance=True, grad=True)
    with torch.enable_grad():
        for i, layer in enumerate(LAYERS[:2]):
            call = make_call(layer, seed=i)
            call.query_heads.requires_grad_(True)
            store.on_attention(call)
        store.end_forward()
    assert stacks == [] and store.entries[("down", "cross", (4, 4), "")].total.requires_grad


def test_stacks_stay_within_their_byte_bound(stacks, monkeypatch) -> None:
    per_call = 1 * 2 * 16 * 7 * 4  # kept row x heads x N x M float32
    monkeypatch.setattr(_summing, "STACK_BYTES", 2 * per_call)
    store = AttentionStore.for_batch(1, guidance=True)
    direct = AttentionStore.for_batch(1, guidance=True, defer=False)
    for i in range(3):
        call = make_call(Layer(f"d{i}"), seed=i)
        store.on_attention(call)
        direct.on_attention(call)
    store.end_forward()
    assert stacks == [2]  # d0 and d1 stacked, d2 alone
    key = ("down", "cross", (4, 4), "")
    torch.testing.assert_close(store.entries[key].total, direct.entries[key].total)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stacked_probabilities_are_float32_without_a_graph_under_autocast(dtype) -> None:
    calls = [make_call(Layer(f"d{i}"), seed=i) for i in range(2)]
    for call in calls:
        call.query_heads.requires_grad_(True)
    with torch.enable_grad(), torch.autocast("cpu", dtype=dtype):
        probs = AttentionCall.stacked_probs(calls, torch.float32, slice(1, 2))
    assert probs.dtype == torch.float32 and not probs.requires_grad
    assert probs.shape == (2, 1, 2, 16, 7)
    for got, call in zip(probs, calls):
        torch.testing.assert_close(got[0].double(), reference(call, row=1), rtol=1e-5, atol=1e-6)


def test_the_scratch_estimate_is_the_largest_product_the_store_makes(monkeypatch) -> None:
    tiny = build_model("tiny", device="cpu", seed=0)
    layers = shapetrace.trace_model("tiny", height=128, width=128, batch=2).layers
    store = AttentionStore.for_batch(1, guidance=True, kinds=("cross", "self"))
    made: list[int] = []
    stacked, single = AttentionCall.stacked_probs, AttentionCall.compute_probs

    def stacked_counted(calls, dtype=torch.float32, rows=None):
        out = stacked(calls, dtype, rows)
        made.append(out.numel() * out.element_size())
        return out

    def single_counted(self, dtype=torch.float32, rows=None, *, grad=False):
        out = single(self, dtype, rows, grad=grad)
        made.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(AttentionCall, "stacked_probs", staticmethod(stacked_counted))
    monkeypatch.setattr(AttentionCall, "compute_probs", single_counted)
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad(), store.capture(tiny.module):
        tiny.module(x, 500, encoder_hidden_states=context)
    est = estimate_memory(store, layers, batch=2)
    assert est.scratch == 2 * max(made)  # scores and probabilities of the largest product


def test_maps_stay_in_the_order_of_their_first_call_when_stacks_sum_out_of_it() -> None:
    store = AttentionStore.for_batch(1, guidance=True, detail="layer")
    for i, layer in enumerate(LAYERS):  # u0 is stacked with d0 and d1, before m0 sums
        store.on_attention(make_call(layer, seed=i))
    assert [key.layer for key in store.entries] == [layer.name for layer in LAYERS]
