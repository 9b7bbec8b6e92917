"""The light replay watches layers and projections by wrapping their ``forward``
(``tracing/_wrap.py``). What the tests hold it to: a projection whose forward hook changes its
output is read after that hook, as the model uses it (the maps equal a float64 softmax of the q
the model used); a hook added inside the block is named, not guessed around; wrappers come off
in any order, also from under each other, and a wrapper other code put back comes off at its
next call; the wrapped forward keeps its signature; a block leaves no reference cycle behind
(each would wait for the garbage collector, and over a denoising loop fragment the heap)."""

from __future__ import annotations

import gc
import inspect

import pytest
import torch

import shapetrace
from shapetrace.errors import ShapeTraceError
from shapetrace.maps import AttentionStore
from shapetrace.tracing import _wrap
from tests._helpers import hook_count


@pytest.fixture(scope="module")
def tiny():
    from shapetrace.models import build_model

    return build_model("tiny", device="cpu", seed=0)


def layer_of(built):
    return built.module.down_blocks[0].attentions[0].transformer_blocks[0].attn2


def forward(built, seed: int = 0) -> torch.Tensor:
    args, kwargs = built.inputs(64, 64, 2, seed=seed)
    with torch.no_grad():
        return built.module(*args, **kwargs).sample


def reference_map(built, attn) -> torch.Tensor:
    """(N, M): the conditional row's probabilities of ``attn``, mean over heads, in float64,
    from the q and k the model used (hooks run after the user's see their output)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        attn.to_q.register_forward_hook(lambda _m, _a, out: seen.__setitem__("q", out)),
        attn.to_k.register_forward_hook(lambda _m, _a, out: seen.__setitem__("k", out)),
    ]
    try:
        forward(built)
    finally:
        for handle in handles:
            handle.remove()
    heads = attn.heads
    q, k = (seen[n][1].double() for n in ("q", "k"))  # row 1: the conditional half
    q = q.view(q.shape[0], heads, -1).transpose(0, 1)
    k = k.view(k.shape[0], heads, -1).transpose(0, 1)
    probs = torch.softmax(q @ k.transpose(1, 2) * attn.scale, dim=-1)
    return probs.mean(dim=0)


def replayed_map(built, attn) -> torch.Tensor:
    """The same map from a store fed by a light replay (the model's signature known)."""
    with torch.no_grad(), shapetrace.trace(built.module, monitors=False):
        forward(built)  # recorded (or already known)
    store = AttentionStore.for_batch(1, guidance=True, detail="layer")
    with store.capture(built.module):
        forward(built)
    (entry,) = [e for key, e in store.entries.items() if key.layer == attn_name(built, attn)]
    assert entry.calls == 1
    return entry.mean()[0].double()


def attn_name(built, attn) -> str:
    return next(n for n, m in built.module.named_modules() if m is attn)


def test_a_light_replay_leaves_the_model_as_it_was(tiny):
    before = {n: dict(m.__dict__) for n, m in tiny.module.named_modules()}
    plain = forward(tiny)
    with torch.no_grad(), shapetrace.trace(tiny.module) as journey:
        forward(tiny)
        forward(tiny)
        assert hook_count(tiny.module) > 0
    assert {x.calls for x in journey.layers} == {2}
    assert hook_count(tiny.module) == 0
    after = {n: dict(m.__dict__) for n, m in tiny.module.named_modules()}
    assert after.keys() == before.keys()
    for name, state in before.items():
        assert after[name].keys() == state.keys(), name
        assert all(after[name][k] is v for k, v in state.items() if k != "training"), name
    assert torch.equal(forward(tiny), plain)


def test_a_projection_hook_that_changes_q_is_seen_as_the_model_used_it(tiny, monkeypatch):
    attn = layer_of(tiny)
    unhooked = replayed_map(tiny, attn)
    handle = attn.to_q.register_forward_hook(lambda _m, _a, out: out * 3.0)
    try:
        expected = reference_map(tiny, attn)
        assert not torch.allclose(expected, unhooked, atol=1e-3)  # the hook changes the map
        torch.testing.assert_close(replayed_map(tiny, attn), expected, rtol=0, atol=1e-6)
        # planted: a wrapper despite the hook reads q before it, and the map is wrong
        monkeypatch.setattr(_wrap, "_hooked", lambda _module: False)
        planted = replayed_map(tiny, attn)
        assert not torch.allclose(planted, expected, atol=1e-3)
        torch.testing.assert_close(planted, unhooked, rtol=0, atol=1e-6)
    finally:
        handle.remove()
    assert hook_count(tiny.module) == 0


def test_a_hook_added_inside_the_block_is_named_not_guessed_around(tiny):
    attn = layer_of(tiny)
    forward(tiny)
    store = AttentionStore.for_batch(1, guidance=True)
    with torch.no_grad(), shapetrace.trace(tiny.module, monitors=False):
        forward(tiny)  # the signature is known from here on
    handle = None
    try:
        with pytest.raises(ShapeTraceError, match="forward hook was added to its Linear"):
            with store.capture(tiny.module) as journey:
                forward(tiny)  # a light replay: to_q is wrapped, no hook on it
                handle = attn.to_q.register_forward_hook(lambda _m, _a, out: out * 3.0)
                forward(tiny)
    finally:
        if handle is not None:
            handle.remove()
    assert any(x.calls == 2 for x in journey.layers if x.name == attn_name(tiny, attn))
    assert hook_count(tiny.module) == 0


def test_wrappers_come_off_in_any_order(tiny):
    forward(tiny)
    with torch.no_grad(), shapetrace.trace(tiny.module):
        forward(tiny)  # known from here on
    outer = shapetrace.trace(tiny.module, monitors=False)
    inner = shapetrace.trace(tiny.module, monitors=False)
    first = outer.__enter__()
    forward(tiny)
    second = inner.__enter__()
    forward(tiny)
    outer.__exit__(None, None, None)  # its wrappers sit under the inner trace's
    forward(tiny)
    assert hook_count(tiny.module) > 0
    inner.__exit__(None, None, None)
    assert hook_count(tiny.module) == 0
    assert all("forward" not in m.__dict__ for m in tiny.module.modules())
    assert {x.calls for x in first.layers} == {2} and {x.calls for x in second.layers} == {2}


def test_a_wrapper_other_code_put_back_comes_off_at_its_next_call(tiny):
    attn = layer_of(tiny)
    forward(tiny)
    plain = forward(tiny)
    with torch.no_grad(), shapetrace.trace(tiny.module):
        forward(tiny)
    calls = []
    with torch.no_grad(), shapetrace.trace(tiny.module) as journey:
        forward(tiny)
        theirs = attn.forward  # other code wraps over ours, as accelerate's hooks do

        def wrapped(*args, **kwargs):
            calls.append(1)
            return theirs(*args, **kwargs)

        attn.forward = wrapped
        forward(tiny)
    assert attn.__dict__["forward"] is wrapped  # theirs stays, over ours, inert now
    assert theirs._shapetrace_wrap.active is False
    assert torch.equal(forward(tiny), plain) and "forward" in attn.__dict__
    attn.forward = theirs  # they put back what they found
    assert hook_count(tiny.module) == 1
    assert torch.equal(forward(tiny), plain)
    assert hook_count(tiny.module) == 0 and "forward" not in attn.__dict__
    assert len(calls) == 2
    assert [x.calls for x in journey.layers if x.name == attn_name(tiny, attn)] == [2]


def test_a_wrapped_forward_keeps_its_signature_and_errors(tiny):
    attn = layer_of(tiny)
    signature = inspect.signature(attn.forward)
    forward(tiny)
    with torch.no_grad(), shapetrace.trace(tiny.module):
        forward(tiny)

    def boom(_m, _a):
        raise RuntimeError("boom")

    handle = None
    try:
        with pytest.raises(RuntimeError, match="boom") as raised:
            with shapetrace.trace(tiny.module, strict=False):
                forward(tiny)
                assert hasattr(attn.__dict__.get("forward"), "_shapetrace_wrap")
                assert inspect.signature(attn.forward) == signature
                handle = attn.to_out[0].register_forward_pre_hook(boom)
                forward(tiny)
    finally:
        if handle is not None:
            handle.remove()
    name = attn_name(tiny, attn)
    assert f"raised inside attention layer {name!r}" in "".join(raised.value.__notes__)
    assert hook_count(tiny.module) == 0


def test_a_block_leaves_no_reference_cycle_for_the_garbage_collector(tiny):
    store = AttentionStore.for_batch(1, guidance=True)
    with store.capture(tiny.module):
        forward(tiny)
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            with store.capture(tiny.module):
                forward(tiny)
            with torch.no_grad(), shapetrace.trace(tiny.module) as journey:
                forward(tiny)
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert {x.calls for x in journey.layers} == {1} and store.entries


def test_a_layer_hooked_inside_the_block_counts_its_call_but_no_finiteness_check(tiny):
    """Its wrapper sees the output before a hook that may replace it: the call is counted,
    and its record says no call was checked rather than passing an output the model did not
    go on with."""
    attn = layer_of(tiny)
    name = attn_name(tiny, attn)
    with torch.no_grad(), shapetrace.trace(tiny.module):
        forward(tiny)  # known from here on
    handles = []

    def hook_attn(_m, _a):  # runs inside the forward, after the wrappers went in
        if not handles:
            handles.append(attn.register_forward_hook(lambda _m, _a, out: out))

    results = {}
    for late in (False, True):
        pre = tiny.module.conv_in.register_forward_pre_hook(hook_attn) if late else None
        try:
            with torch.no_grad(), shapetrace.trace(tiny.module) as journey:
                forward(tiny)
        finally:
            for handle in [*handles, *([pre] if pre else [])]:
                handle.remove()
        (record,) = [x for x in journey.layers if x.name == name]
        finite = any(c.name == "finite" for c in record.checks)
        results[late] = (record.calls, record.checked, finite)
    assert results[False] == (1, 1, True)
    assert results[True] == (1, 0, False)
    assert hook_count(tiny.module) == 0
