"""Windows and boundaries: which calls a store's sums hold, and when that changes."""

from __future__ import annotations

import pytest
import torch

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps import AttentionStore, aggregate
from shapetrace.models import build_model
from tests._helpers import hook_count, same_state, state_snapshot
from tests.test_maps_store import FakeCall, FakeLayer, random_probs

LAYER = FakeLayer("down.attn2")


def feed(store: AttentionStore, seed: int, *, call: int = 0) -> torch.Tensor:
    """One call of LAYER with fresh probabilities; returns its head mean (2, 2, 77)."""
    layer = FakeLayer("down.attn2")
    layer.call = call  # type: ignore[attr-defined]
    probs = random_probs(1, 2, 4, seed=seed)
    store.on_attention(FakeCall(layer, probs))
    return probs[0].mean(dim=0).reshape(2, 2, 77)


def read(store: AttentionStore) -> torch.Tensor:
    return aggregate(store, 2, ("down",))


def test_the_run_window_averages_every_forward_since_reset():
    store = AttentionStore(window="run")
    maps = []
    for seed in range(3):
        maps.append(feed(store, seed))
        store.end_step()
    torch.testing.assert_close(read(store), torch.stack(maps).mean(0))
    assert store.steps == 3 and store.forwards == 3


def test_the_step_window_holds_the_calls_since_the_last_step_end():
    store = AttentionStore(window="step")
    a = feed(store, 0)
    b = feed(store, 1, call=1)  # a second forward in the same step (A&E-style refinement)
    torch.testing.assert_close(read(store), (a + b) / 2)
    store.end_step()
    torch.testing.assert_close(read(store), (a + b) / 2)  # still readable after the end
    c = feed(store, 2)  # the next step's first call opens a new window
    torch.testing.assert_close(read(store), c)


def test_the_forward_window_holds_the_last_forward_only():
    store = AttentionStore(window="forward")
    feed(store, 0)
    store.end_forward()
    b = feed(store, 1)
    torch.testing.assert_close(read(store), b)
    store.end_step()  # a step end is a forward end too
    c = feed(store, 2)
    torch.testing.assert_close(read(store), c)
    assert store.forwards == 2 and store.steps == 1


def test_a_forward_window_refuses_a_layer_seen_twice_without_a_boundary():
    store = AttentionStore(window="forward")
    feed(store, 0)
    with pytest.raises(InputShapeError, match=r"ran twice in one forward window.*end_forward"):
        feed(store, 1)
    with pytest.raises(InputShapeError, match="ran twice"):
        read(store)  # the error is kept: no reader sees a silently wrong window
    store.reset()
    feed(store, 2, call=1)  # a layer called twice within one forward has call indices 0, 1
    feed(store, 3, call=0)
    assert store.entries[("down", "cross", (2, 2), "")].calls == 2


def test_an_unlabelled_forward_store_relabels_its_rows_each_window():
    store = AttentionStore(window="forward")
    store.on_attention(FakeCall(LAYER, random_probs(2, 2, 4)))
    store.end_forward()
    store.on_attention(FakeCall(LAYER, random_probs(3, 2, 4)))  # a batch of 3 now
    assert len(store.kept_rows) == 3


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", device="cpu", seed=0).module


def test_capture_marks_each_forward_notes_the_latent_and_leaves_the_model_as_it_was(tiny):
    hooks, state = hook_count(tiny), state_snapshot(tiny)
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 12, generator=g), torch.randn(2, 1, 77, 64, generator=g)
    last = AttentionStore(window="forward")
    alone = AttentionStore(window="forward")
    with torch.no_grad(), last.capture(tiny) as journey:
        tiny(x, 500, encoder_hidden_states=context[0])
        tiny(x, 500, encoder_hidden_states=context[1])  # two forwards in one block
    with torch.no_grad(), alone.capture(tiny):
        tiny(x, 500, encoder_hidden_states=context[1])
    assert last.forwards == 2 and len(journey.layers) == 32  # one record per signature...
    assert {layer.calls for layer in journey.layers} == {2}  # ...standing for both forwards
    assert last.latent == (4, 8, 12) and last.latent_size == (8, 12)
    torch.testing.assert_close(aggregate(last, (4, 6)), aggregate(alone, (4, 6)))
    assert hook_count(tiny) == hooks and same_state(tiny, state)


def test_capture_raises_a_kept_error_and_removes_its_hooks(tiny):
    hooks = hook_count(tiny)
    store = AttentionStore.for_batch(1, guidance=True)  # two rows; the batch will be one
    with pytest.raises(InputShapeError, match=r"got batch 1 but the store was told 2 rows"):
        with torch.no_grad(), store.capture(tiny):
            tiny(torch.randn(1, 4, 8, 8), 500, encoder_hidden_states=torch.randn(1, 77, 64))
    assert hook_count(tiny) == hooks
    with pytest.raises(InputShapeError, match=r"capture\(\) takes the model .* got Tensor"):
        with store.capture(torch.zeros(1)):  # type: ignore[arg-type]
            pass


def test_the_latent_size_is_unknown_before_any_forward():
    with pytest.raises(ShapeTraceError, match=r"seen no forward yet.*latent_size="):
        _ = AttentionStore().latent_size
