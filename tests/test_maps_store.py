"""The attention store against hand-made calls: bookkeeping, rows, filters, memory."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps import AttentionStore, aggregate, batch_rows, estimate_memory


@dataclass
class FakeLayer:
    name: str
    kind: str = "cross"
    place: str = "down"
    resolution: tuple[int, int] | None = (2, 2)
    heads: int = 2


class FakeCall:
    """An ``AttentionCall`` stand-in: given probabilities (B, H, N, M), or q and k."""

    def __init__(self, layer: FakeLayer, probs: torch.Tensor, *, materialized: bool = False):
        b, h, n, m = probs.shape
        self.layer = layer
        self.query_heads = torch.zeros(b, h, n, 4)
        self.key_heads = torch.zeros(b, h, m, 4)
        self.scale = 0.5
        self.mask = None
        self.probs = probs if materialized else None
        self._probs = probs
        self.computed = 0

    def compute_probs(
        self,
        dtype: torch.dtype = torch.float32,
        rows: torch.Tensor | slice | None = None,
        *,
        grad: bool = False,
    ) -> torch.Tensor:
        """Like AttentionCall: materialized probabilities cost nothing; rows select."""
        if self.probs is None:
            self.computed += 1
        probs = self._probs
        if isinstance(rows, slice):
            probs = probs[rows]
        elif rows is not None:
            probs = probs.index_select(0, rows)
        return probs.to(dtype)


def random_probs(b: int, h: int, n: int, m: int = 77, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, m, generator=g).softmax(dim=-1)


def test_batch_rows_put_unconditional_rows_first_then_conditional_prompt_major():
    rows = batch_rows(2, images_per_prompt=2, guidance=True)
    assert [(r.branch, r.prompt, r.image) for r in rows] == [
        ("uncond", 0, 0),
        ("uncond", 0, 1),
        ("uncond", 1, 0),
        ("uncond", 1, 1),
        ("cond", 0, 0),
        ("cond", 0, 1),
        ("cond", 1, 0),
        ("cond", 1, 1),
    ]
    assert [r.row for r in rows] == list(range(8))


def test_batch_rows_refuse_zero_prompts():
    with pytest.raises(InputShapeError, match=r"prompts=0: need a whole number >= 1"):
        batch_rows(0)


def test_one_call_adds_its_heads_summed_and_counts_each_head():
    store = AttentionStore.for_batch(1, guidance=False)
    probs = random_probs(1, 2, 4)
    store.on_attention(FakeCall(FakeLayer("l0"), probs))
    entry = store.entries[("down", "cross", (2, 2), "")]
    assert entry.count == 2 and entry.calls == 1 and entry.layers == {"l0"}
    torch.testing.assert_close(entry.total, probs.sum(dim=1))
    torch.testing.assert_close(entry.mean(), probs.mean(dim=1))


def test_materialized_probabilities_are_used_without_recomputing():
    store = AttentionStore()
    call = FakeCall(FakeLayer("l0"), random_probs(1, 2, 4), materialized=True)
    store.on_attention(call)
    assert call.computed == 0
    lazy = FakeCall(FakeLayer("l0"), random_probs(1, 2, 4))
    store.on_attention(lazy)
    assert lazy.computed == 0  # deferred: summed when something reads the store
    assert store.entries and lazy.computed == 1 and call.computed == 0


def test_deferred_sums_equal_sums_made_call_by_call() -> None:
    layers = [FakeLayer(f"l{i}") for i in range(3)]
    probs = [random_probs(2, 2, 4, seed=i) for i in range(3)]
    stores = [AttentionStore.for_batch(1, guidance=True, detail=d, defer=defer)
              for d in ("resolution", "head") for defer in (True, False)]
    for store in stores:
        for layer, p in zip(layers, probs):
            store.on_attention(FakeCall(layer, p))
    for deferred, direct in (stores[:2], stores[2:]):
        assert deferred.entries.keys() == direct.entries.keys()
        for key, entry in direct.entries.items():
            assert torch.equal(deferred.entries[key].total, entry.total)
            assert deferred.entries[key].count == entry.count


def test_a_call_changed_in_place_before_it_was_summed_is_refused_by_name() -> None:
    store = AttentionStore()
    call = FakeCall(FakeLayer("down.attn2"), random_probs(1, 2, 4))
    store.on_attention(call)
    call.query_heads.add_(1.0)  # the model writes into a tensor the call holds
    with pytest.raises(ShapeTraceError, match=r"'down.attn2'.*changed in place.*defer=False"):
        store.check()
    direct = AttentionStore(defer=False)
    direct.on_attention(call)
    call.query_heads.add_(1.0)
    assert direct.entries[("down", "cross", (2, 2), "")].calls == 1  # summed before the write


def test_held_tensors_past_the_budget_are_summed_at_once() -> None:
    store = AttentionStore()
    store._pending.budget = 1  # every call's q and k hold more than a byte
    call = FakeCall(FakeLayer("l0"), random_probs(1, 2, 4))
    store.on_attention(call)
    assert call.computed == 1 and len(store._pending) == 0


def test_calls_made_under_inference_mode_are_summed_at_once() -> None:
    """Inference tensors keep no version counter, so a write could not be caught later."""
    store = AttentionStore()
    with torch.inference_mode():
        call = FakeCall(FakeLayer("l0"), random_probs(1, 2, 4))
    store.on_attention(call)
    assert call.computed == 1 and len(store._pending) == 0


def test_capture_under_inference_mode_gives_the_maps_of_no_grad() -> None:
    from shapetrace.models import build_model

    built = build_model("tiny", device="cpu", seed=0)
    args, kwargs = built.inputs(64, 64, 2, seed=0)
    stores = {}
    for mode in (torch.no_grad, torch.inference_mode):
        store = stores[mode.__name__] = AttentionStore.for_batch(1, guidance=True)
        with mode():
            for _ in range(2):  # recorded, then replayed through the learned plan
                with store.capture(built.module):
                    built.module(*args, **kwargs)
    plain, inference = stores["no_grad"].entries, stores["inference_mode"].entries
    assert plain.keys() == inference.keys() and len(plain) > 0
    for key, entry in plain.items():
        assert inference[key].calls == entry.calls == 2 * len(entry.layers)
        torch.testing.assert_close(inference[key].total, entry.total, rtol=0, atol=0)


def test_select_picks_the_conditional_row_of_each_prompt_under_guidance():
    store = AttentionStore.for_batch(2, guidance=True)  # rows: u0, u1, c0, c1
    probs = random_probs(4, 2, 4)
    store.on_attention(FakeCall(FakeLayer("l0"), probs))
    for prompt, row in ((0, 2), (1, 3)):
        expected = probs[row].mean(dim=0).reshape(2, 2, 77)
        torch.testing.assert_close(aggregate(store, 2, ("down",), select=prompt), expected)


def test_unconditional_rows_are_dropped_unless_keep_all():
    probs = random_probs(2, 2, 4)
    lean = AttentionStore.for_batch(1, guidance=True)
    full = AttentionStore.for_batch(1, guidance=True, keep="all")
    for store in (lean, full):
        store.on_attention(FakeCall(FakeLayer("l0"), probs))
    assert lean.entries[("down", "cross", (2, 2), "")].total.shape == (1, 4, 77)
    assert full.entries[("down", "cross", (2, 2), "")].total.shape == (2, 4, 77)
    uncond = aggregate(full, 2, ("down",), select=0, branch="uncond")
    torch.testing.assert_close(uncond, probs[0].mean(dim=0).reshape(2, 2, 77))
    torch.testing.assert_close(aggregate(full, 2, ("down",)), aggregate(lean, 2, ("down",)))
    with pytest.raises(ShapeTraceError, match=r"no stored row for prompt 0.*uncond"):
        aggregate(lean, 2, ("down",), select=0, branch="uncond")


def test_an_unlabelled_store_treats_each_row_as_its_own_prompt():
    store = AttentionStore()
    probs = random_probs(3, 2, 4)
    store.on_attention(FakeCall(FakeLayer("l0"), probs))
    assert [r.branch for r in store.kept_rows] == ["single"] * 3
    expected = probs[2].mean(dim=0).reshape(2, 2, 77)
    torch.testing.assert_close(aggregate(store, 2, ("down",), select=2), expected)


def test_a_batch_that_does_not_match_the_row_labels_is_refused_naming_the_layer():
    store = AttentionStore.for_batch(1, guidance=True)
    with pytest.raises(InputShapeError, match=r"layer 'down\.attn2' got batch 4 .* 2 rows"):
        store.on_attention(FakeCall(FakeLayer("down.attn2"), random_probs(4, 2, 4)))
    # kept, so a tracer that shields the forward from probe errors cannot hide it
    with pytest.raises(InputShapeError, match=r"layer 'down\.attn2' got batch 4"):
        store.end_step()
    store.reset()
    store.end_step()


def test_wants_filters_by_kind_place_and_layer_resolution():
    store = AttentionStore(places=("up", "down"), resolutions=[16, (12, 20)])
    assert store.wants(FakeLayer("a", resolution=(16, 16)))
    assert store.wants(FakeLayer("b", place="up", resolution=(12, 20)))
    assert not store.wants(FakeLayer("c", resolution=(20, 12)))
    assert not store.wants(FakeLayer("d", place="mid", resolution=(16, 16)))
    assert not store.wants(FakeLayer("e", kind="self", resolution=(16, 16)))
    assert not store.wants(FakeLayer("f", resolution=None))
    both = AttentionStore(kinds=("cross", "self"))
    assert both.wants(FakeLayer("g", kind="self"))


def test_unwanted_calls_are_ignored_without_computing_probabilities():
    store = AttentionStore()
    call = FakeCall(FakeLayer("attn1", kind="self"), random_probs(1, 2, 4, m=4))
    store.on_attention(call)
    assert call.computed == 0 and not store.entries


def test_unknown_kinds_and_keep_modes_are_refused():
    with pytest.raises(InputShapeError, match=r"'crosss' is not one of cross, self, joint"):
        AttentionStore(kinds=("crosss",))
    with pytest.raises(InputShapeError, match=r"keep='uncond': keep is one of 'cond', 'all'"):
        AttentionStore(keep="uncond")


def test_non_square_maps_are_keyed_by_geometry_not_by_sqrt_of_n():
    store = AttentionStore()
    store.on_attention(FakeCall(FakeLayer("wide", resolution=(2, 8)), random_probs(1, 2, 16)))
    store.on_attention(FakeCall(FakeLayer("square", resolution=(4, 4)), random_probs(1, 2, 16)))
    assert set(store.available()[("down", "cross")]) == {(2, 8), (4, 4)}
    assert aggregate(store, (2, 8), ("down",)).shape == (2, 8, 77)
    assert aggregate(store, 4, ("down",)).shape == (4, 4, 77)


def test_a_resolution_that_disagrees_with_the_query_tokens_is_refused():
    store = AttentionStore()
    with pytest.raises(ShapeTraceError, match=r"resolution 3x3 has 9 pixels but the query has N=4"):
        store.on_attention(FakeCall(FakeLayer("l0", resolution=(3, 3)), random_probs(1, 2, 4)))


def test_a_layer_without_resolution_is_refused_when_no_filter_skips_it():
    store = AttentionStore()
    with pytest.raises(ShapeTraceError, match="has no resolution"):
        store.on_attention(FakeCall(FakeLayer("l0", resolution=None), random_probs(1, 2, 4)))


def test_a_changed_context_length_mid_run_is_refused():
    store = AttentionStore()
    store.on_attention(FakeCall(FakeLayer("l0"), random_probs(1, 2, 4, m=77)))
    with pytest.raises(ShapeTraceError, match=r"do not match .* call store\.reset\(\)"):
        store.on_attention(FakeCall(FakeLayer("l0"), random_probs(1, 2, 4, m=10)))


def test_running_sums_stay_the_same_size_however_many_steps_run():
    store = AttentionStore.for_batch(1, guidance=True)
    sizes = []
    for step in range(50):
        for i, place in enumerate(("down", "up")):
            probs = random_probs(2, 2, 4, seed=step * 2 + i)
            store.on_attention(FakeCall(FakeLayer(f"{place}.attn2", place=place), probs))
        store.end_step()
        sizes.append(store.nbytes())
    assert sizes[0] == sizes[-1] == 2 * 4 * 77 * 4
    assert store.steps == 50
    store.reset()
    assert store.nbytes() == 0 and store.steps == 0


def test_the_memory_estimate_is_what_the_store_then_holds():
    store = AttentionStore.for_batch(1, guidance=True)
    layers = [
        FakeLayer("d0", resolution=(2, 2)),
        FakeLayer("d1", resolution=(2, 2)),
        FakeLayer("u0", place="up", resolution=(2, 4)),
        FakeLayer("s0", kind="self", resolution=(2, 2)),
    ]
    est = estimate_memory(store, layers, batch=2)
    assert est.layers == 3 and est.rows_kept == 1 and est.batch == 2
    assert est.running == (4 * 77 + 8 * 77) * 4
    assert est.scratch == 2 * 1 * 2 * 8 * 77 * 4  # scores and probs of the kept row
    for layer in layers:
        n = layer.resolution[0] * layer.resolution[1]
        m = n if layer.kind == "self" else 77
        store.on_attention(FakeCall(layer, random_probs(2, 2, n, m=m)))
    assert store.nbytes() == est.running
    assert "1 of 2 rows" in str(est) and "flat in steps" in str(est)


def test_the_memory_estimate_of_self_attention_uses_n_keys():
    store = AttentionStore(kinds=("self",))
    est = estimate_memory(store, [FakeLayer("s", kind="self", resolution=(4, 4))], batch=1)
    assert est.running == 16 * 16 * 4


def test_a_joint_layer_is_read_as_cross_attention_by_aggregate_and_the_recipes():
    """SD3/Flux: the tracer hands the image-query x text-key block of a joint softmax (rows sum
    to less than 1) with kind "joint", place "transformer" and the patch grid."""
    from shapetrace.maps.recipes import attend_excite_maps, attend_excite_store, ledits_store

    joint = random_probs(1, 2, 16 + 77, m=16 + 77)  # SD3's order: image tokens, then text
    block = joint[:, :, :16, 16:]  # (1, 2, 16, 77): image queries x text keys
    layer = FakeLayer("transformer_blocks.0.attn", kind="joint", place="transformer",
                      resolution=(4, 4))
    for store in (AttentionStore(), attend_excite_store(grad=False)):
        assert store.wants(layer)
        call = FakeCall(layer, block)
        call.query_heads = torch.zeros(1, 2, 16 + 77, 4)  # q and k hold every token
        call.key_heads = torch.zeros(1, 2, 16 + 77, 4)
        call.query_tokens, call.key_tokens = slice(0, 16), slice(16, None)
        store.on_attention(call)
    expected = block[0].mean(dim=0).reshape(4, 4, 77)
    torch.testing.assert_close(aggregate(store, 4, ("transformer",)), expected)
    torch.testing.assert_close(attend_excite_maps(store, res=4), expected)
    assert not AttentionStore(kinds=("self",)).wants(layer)
    assert "transformer" in ledits_store().places


def test_kept_rows_are_taken_as_a_view_when_consecutive_and_allowed() -> None:
    from shapetrace.maps.rows import taker

    rows = batch_rows(2, guidance=True)  # u0, u1, c0, c1
    cond = [r for r in rows if r.branch == "cond"]
    assert taker(cond, torch.device("cpu"), view=True) == slice(2, 4)
    assert taker(cond, torch.device("cpu"), view=False).tolist() == [2, 3]
    assert taker([rows[0], rows[2]], torch.device("cpu"), view=True).tolist() == [0, 2]
