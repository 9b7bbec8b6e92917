"""Calls like ones a store checked before are held at hand-over without the full checks
(``maps/_intake.py``). What the tests hold it to: the same sums as a store that checks and sums
every call as it comes, the settings and grids of each call honoured, and the window's checks
still made."""

from __future__ import annotations

import pytest
import torch

from shapetrace.errors import ShapeTraceError
from shapetrace.maps import AttentionStore, _intake
from tests.test_maps_store import FakeCall, FakeLayer, random_probs


@pytest.fixture(scope="module")
def tiny():
    from shapetrace.models import build_model

    return build_model("tiny", device="cpu", seed=0)


def full_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The layers of the calls that went through every check, in order."""
    seen: list[str] = []
    accept = _intake.Intake._accept

    def counted(self, call, grad, **kw):
        seen.append(call.layer.name)
        return accept(self, call, grad, **kw)

    monkeypatch.setattr(_intake.Intake, "_accept", counted)
    return seen


def test_repeated_captures_give_the_sums_of_a_store_that_checks_every_call(tiny, monkeypatch):
    checked = full_checks(monkeypatch)
    args, kwargs = tiny.inputs(64, 64, 2, seed=0)
    known = AttentionStore.for_batch(1, guidance=True)
    direct = AttentionStore.for_batch(1, guidance=True, defer=False)
    with torch.no_grad():
        for store in (known, direct):
            for _ in range(3):  # a `with` per forward, as a denoising loop does
                with store.capture(tiny.module):
                    tiny.module(*args, **kwargs)
    cross = sum(1 for name, _m in tiny.module.named_modules() if name.endswith("attn2"))
    direct_checks = checked[len(checked) - 3 * cross:]
    known_checks = checked[: len(checked) - 3 * cross]
    assert len(direct_checks) == 3 * cross  # defer=False checks every call
    # the first forward checks each layer; later ones (the same "run" window) none
    assert len(known_checks) == cross
    assert known.entries.keys() == direct.entries.keys() and known.entries
    for key, entry in direct.entries.items():
        assert known.entries[key].calls == entry.calls and known.entries[key].count == entry.count
        torch.testing.assert_close(known.entries[key].total, entry.total, rtol=0, atol=0)


def test_a_changed_setting_is_honoured_by_calls_known_before(tiny):
    args, kwargs = tiny.inputs(64, 64, 2, seed=0)
    store = AttentionStore.for_batch(1, guidance=True)
    with torch.no_grad():
        with store.capture(tiny.module):
            tiny.module(*args, **kwargs)
        before = {k: e.calls for k, e in store.entries.items()}
        store.places = ("up",)
        with store.capture(tiny.module):
            tiny.module(*args, **kwargs)
    after = {k: e.calls for k, e in store.entries.items()}
    assert {k.place for k in before} == {"down", "mid", "up"}
    for key, calls in before.items():
        assert after[key] == (2 * calls if key.place == "up" else calls), key


def test_a_grid_of_the_same_size_is_a_new_call_not_a_known_one():
    """(2, 2) and (1, 4) both have 4 tokens: same layer, same q and k shapes."""
    store = AttentionStore()
    probs = random_probs(1, 2, 4)
    for grid in ((2, 2), (1, 4), (2, 2)):
        store.on_attention(FakeCall(FakeLayer("down.attn2", resolution=grid), probs))
    sums = {k.resolution: e.calls for k, e in store.entries.items()}
    assert sums == {(2, 2): 2, (1, 4): 1}


def test_a_known_call_whose_maps_no_longer_fit_the_window_is_refused_by_name():
    store = AttentionStore(window="step")
    store.on_attention(FakeCall(FakeLayer("down.a"), random_probs(1, 2, 4, m=77)))
    store.end_step()
    # the next window's first call, of another layer at the same grid, stores 10 keys
    store.on_attention(FakeCall(FakeLayer("down.b"), random_probs(1, 2, 4, m=10)))
    store.on_attention(FakeCall(FakeLayer("down.a"), random_probs(1, 2, 4, m=77)))
    with pytest.raises(ShapeTraceError, match=r"layer 'down.a': maps \(1, 4, 77\) do not match"):
        store.end_step()


def test_reset_forgets_the_calls_known_before(monkeypatch):
    checked = full_checks(monkeypatch)
    store = AttentionStore()
    call = FakeCall(FakeLayer("down.attn2"), random_probs(1, 2, 4))
    for _ in range(2):
        store.on_attention(call)
    store.reset()
    store.on_attention(call)
    assert checked == ["down.attn2", "down.attn2"]
    assert store.entries[("down", "cross", (2, 2), "")].calls == 1


def test_a_known_call_keeps_its_grad_mode_and_a_grad_store_its_graph():
    store = AttentionStore(grad=True)
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    k = torch.randn(1, 2, 77, 8)

    def call() -> FakeCall:
        fake = FakeCall(FakeLayer("down.attn2"), random_probs(1, 2, 4))
        fake.query_heads, fake.key_heads = q, k
        fake.compute_probs = lambda dtype=torch.float32, rows=None, grad=False: (  # type: ignore
            (q @ k.transpose(-1, -2)).softmax(-1)
        )
        return fake

    with torch.enable_grad():
        store.on_attention(call())
        store.on_attention(call())  # known: held without the checks
    total = store.entries[("down", "cross", (2, 2), "")].total
    total.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ShapeTraceError, match=r"grad=True.*torch.no_grad"):
        with torch.no_grad():
            store.on_attention(call())  # a grad mode it was never checked in: checked now


def test_a_call_known_under_other_settings_is_checked_again_when_summed():
    store = AttentionStore()
    probs = random_probs(1, 2, 4)
    store.on_attention(FakeCall(FakeLayer("down.attn2"), probs))
    store.end_step()
    store.places = ("up",)  # the store no longer selects "down" layers
    store.on_attention(FakeCall(FakeLayer("down.attn2"), probs))  # held as known
    store.end_step()
    assert store.entries[("down", "cross", (2, 2), "")].calls == 1
