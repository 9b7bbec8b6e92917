"""The memory estimate against what a capture really holds: running sums and autograd graph.

The graph is measured with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd
saves for backward during the forward, counted once per storage. The same forward with
gradients on is run with a plain store and with ``grad=True``; the difference is what keeping
the maps' graph costs.
"""

from __future__ import annotations

import pytest
import torch

import shapetrace
from shapetrace.maps import AttentionStore, estimate_memory
from shapetrace.maps._deferred import MAX_CALLS
from shapetrace.models import build_model

SIZE = (128, 128)  # latent 16x16


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", device="cpu", seed=0)


@pytest.fixture(scope="module")
def layers(tiny):
    """One guided forward's attention calls, traced on meta (shapes only)."""
    return list(shapetrace.trace_model("tiny", height=SIZE[0], width=SIZE[1], batch=2).layers)


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, SIZE[0] // 8, SIZE[1] // 8, generator=g)
    return x, torch.randn(2, 77, 64, generator=g)


def saved_bytes(unet, store: AttentionStore) -> tuple[int, int]:
    """Bytes autograd saves in one captured forward with gradients (unique storages), and
    the integer (index) part of them."""
    storages: dict[int, tuple[int, bool]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = (st.nbytes(), not t.is_floating_point())
        return t

    x, context = inputs()
    x.requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with store.capture(unet):
            out = unet(x, 500, encoder_hidden_states=context).sample
    del out
    return sum(b for b, _ in storages.values()), sum(b for b, i in storages.values() if i)


def test_the_graph_estimate_is_what_autograd_saves_for_the_maps(tiny, layers):
    plain = AttentionStore.for_batch(1, guidance=True)
    graph = AttentionStore.for_batch(1, guidance=True, grad=True)
    base, _ = saved_bytes(tiny.module, plain)
    more, more_ints = saved_bytes(tiny.module, graph)
    est = estimate_memory(graph, layers, batch=2)
    assert est.graph > 0 and estimate_memory(plain, layers, batch=2).graph == 0
    extra = more - base
    print(f"graph: estimated {est.graph:,} bytes, measured {extra:,} (of which row indices "
          f"{more_ints:,}); model's own saved tensors {base:,}")
    # what the estimate leaves out is the row index each call saves (8 bytes a row)
    assert est.graph <= extra <= est.graph + 8 * est.rows_kept * est.layers
    assert "autograd graph up to" in str(est) and "held until the next forward" not in str(est)


@pytest.mark.parametrize("detail", ["resolution", "layer", "head"])
def test_the_running_estimate_is_what_the_store_holds_at_each_detail(tiny, layers, detail):
    store = AttentionStore.for_batch(1, guidance=True, detail=detail, kinds=("cross", "self"))
    est = estimate_memory(store, layers, batch=2)
    x, context = inputs()
    with torch.no_grad(), store.capture(tiny.module):
        tiny.module(x, 500, encoder_hidden_states=context)
    assert store.nbytes() == est.running
    assert len(store.entries) == len(est.per_key)
    cross = {k: v for k, v in est.per_key.items() if k.kind == "cross"}
    per_layer = sum(16 * 16 * 77 * 4 for k in cross if k.resolution == (16, 16))
    if detail != "resolution":  # five layers at 16x16 (2 down, 3 up), each apart
        factor = 8 if detail == "head" else 1
        assert sum(v for k, v in cross.items() if k.resolution == (16, 16)) == per_layer * factor
        assert per_layer == 5 * 16 * 16 * 77 * 4


@pytest.mark.parametrize("kinds", [("cross",), ("cross", "self")])
def test_the_held_estimate_is_the_most_a_deferring_store_holds_before_it_sums(
    tiny, layers, kinds
):
    store = AttentionStore.for_batch(1, guidance=True, kinds=kinds)
    est = estimate_memory(store, layers, batch=2)
    held: list[tuple[int, int]] = []  # (calls, bytes) held each time the store sums
    drain = store._pending.drain

    def counted(sum_one) -> None:
        held.append((len(store._pending), store._pending.held))
        drain(sum_one)

    store._pending.drain = counted  # type: ignore[method-assign]
    x, context = inputs()
    with torch.no_grad(), store.capture(tiny.module):
        tiny.module(x, 500, encoder_hidden_states=context)
    assert max(b for _n, b in held) == est.held > 0 and not store._pending
    assert max(n for n, _b in held) == MAX_CALLS and sum(n for n, _b in held) == est.layers
    assert est.peak == est.running + est.scratch + est.held
    assert "held until summed" in str(est)
    assert estimate_memory(AttentionStore(defer=False), layers, batch=2).held == 0
