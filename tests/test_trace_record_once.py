"""Recording once per input signature gives the journey of recording every call: the same
layers, kinds, grids and stage shapes, the same probabilities for probes, a new record when
the signature changes, a fresh look after the model changes; and torch.compile'd models are
traced without recompiling."""

from __future__ import annotations

import pytest
import torch

import shapetrace
from shapetrace.journey import Journey
from shapetrace.models import build_model
from tests._helpers import hook_count


def contract(journey: Journey) -> list[tuple]:
    return [
        (
            x.name,
            x.kind,
            x.place,
            x.resolution,
            x.heads,
            x.head_dim,
            x.processor,
            tuple((s.name, s.shape) for s in x.stages),
        )
        for x in journey.layers
    ]


def run(model, inputs, **options) -> Journey:
    with torch.no_grad(), shapetrace.trace(model, **options) as journey:
        for args, kwargs in inputs:
            model(*args, **kwargs)
    return journey


class Collect:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, torch.Tensor]] = []

    def on_attention(self, call) -> None:
        self.seen.append((call.layer.name, call.call_index, call.compute_probs(torch.float64)))


@pytest.mark.parametrize(
    ("name", "device", "size"),
    [("sd15", "meta", 256), ("tiny", "cpu", 64), ("reference", "cpu", 128)],
)
def test_repeated_calls_give_the_every_call_journey(name, device, size) -> None:
    built = build_model(name, device=device, seed=0)
    inputs = [built.inputs(size, size, 2, seed=s) for s in range(3)]
    every = run(built.module, inputs, every_call=True)
    once = run(built.module, inputs)
    n = len(once.layers)
    assert len(every.layers) == 3 * n and {x.calls for x in once.layers} == {3}
    for call in range(3):  # every call of every layer took the recorded path
        assert contract(Journey(every.layers[call * n : (call + 1) * n])) == contract(once)
    again = run(built.module, inputs)  # a later trace: nothing recorded op by op
    assert contract(again) == contract(once) and {x.calls for x in again.layers} == {3}
    assert hook_count(built.module) == 0


@pytest.mark.parametrize(
    ("name", "device", "size", "layers"),
    [("tiny", "cpu", 64, 32), ("reference", "cpu", 128, 2), ("sd15", "meta", 256, 32)],
)
def test_probes_see_the_same_probabilities_on_recorded_and_repeated_calls(
    name, device, size, layers
) -> None:
    built = build_model(name, device=device, seed=0)
    inputs = [built.inputs(size, size, 2, seed=s) for s in range(3)]
    every, once, later = Collect(), Collect(), Collect()
    run(built.module, inputs, every_call=True, probes=[every], monitors=False)
    run(built.module, inputs, probes=[once], monitors=False)
    run(built.module, inputs, probes=[later], monitors=False)  # a later trace: light replay
    for seen in (once.seen, later.seen):
        assert [(n, i) for n, i, _ in seen] == [(n, i) for n, i, _ in every.seen]
        assert len(seen) == 3 * layers and {i for _n, i, _p in seen} == {0, 1, 2}
        for (_n, _i, a), (_m, _j, b) in zip(every.seen, seen):
            assert a.shape == b.shape and a.device.type == device
            if device != "meta":  # the reference model materializes its float32 softmax,
                # which a recorded call hands over; a repeated call's probe computes it anew
                tolerance = (0, 1e-12) if name == "tiny" else (1e-5, 1e-7)  # float32 softmax
                torch.testing.assert_close(a, b, rtol=tolerance[0], atol=tolerance[1])


def test_a_changed_signature_gets_its_own_record() -> None:
    built = build_model("tiny", device="cpu", seed=0)
    sizes = [64, 32, 64, 64, 32]
    inputs = [built.inputs(s, s, 2, seed=i) for i, s in enumerate(sizes)]
    once = run(built.module, inputs)
    every = run(built.module, inputs, every_call=True)
    assert len(once.layers) == 64  # each layer at two sizes
    by_size = {
        x.resolution: x
        for x in once.layers
        if x.name.endswith("down_blocks.0.attentions.0.transformer_blocks.0.attn2")
    }
    assert by_size[(8, 8)].calls == 3 and by_size[(4, 4)].calls == 2
    first_of_each = [x for x in every.layers if x.call in (0, 1)]
    assert contract(Journey(first_of_each)) == contract(once)


def test_a_changed_model_or_processor_is_looked_at_again() -> None:
    from diffusers.models.attention_processor import AttnProcessor

    built = build_model("tiny", device="cpu", seed=0)
    inputs = [built.inputs(64, 64, 2)]
    before = run(built.module, inputs)
    built.module.set_attn_processor(AttnProcessor())  # a new processor object: new signatures
    after = run(built.module, inputs)
    assert {x.processor for x in before.layers} == {"AttnProcessor2_0"}
    assert {x.processor for x in after.layers} == {"AttnProcessor"}
    assert after.layers[0].stage("scores").layout == "(B*H, N, M) batch-major"
    built.module.fuse_qkv_projections()  # new modules in the tree: found again
    fused = run(built.module, inputs)
    assert "to_qkv" in fused.layers[0].stage("query").op


def test_monitor_every_checks_a_sample_and_says_how_many() -> None:
    built = build_model("tiny", device="cpu", seed=0)
    inputs = [built.inputs(64, 64, 2, seed=s) for s in range(5)]
    run(built.module, inputs)  # the signatures are known from here on
    default = run(built.module, inputs)
    sampled = run(built.module, inputs, monitor_every=2)  # calls 1, 3 and 5
    assert {(x.calls, x.checked) for x in default.layers} == {(5, 1)}  # finiteness of call 1
    assert {(x.calls, x.checked) for x in sampled.layers} == {(5, 3)}
    assert all(c.name != "rows_sum_to_one" for x in default.layers for c in x.checks)
    with pytest.raises(shapetrace.ShapeTraceError, match="monitor_every=0"):
        shapetrace.trace(built.module, monitor_every=0)


def test_a_compiled_model_is_traced_without_recompiling() -> None:
    from torch._dynamo.utils import counters

    from shapetrace.reference import CrossAttention

    torch.manual_seed(0)
    model = CrossAttention(64, 32, num_heads=4).eval()
    compiled = torch.compile(model, backend="eager")
    x, context = torch.randn(2, 10, 64), torch.randn(2, 7, 32)
    with torch.no_grad():
        plain = compiled(x, context)  # compiles
        graphs = counters["stats"]["unique_graphs"]
        with shapetrace.trace(compiled) as journey:
            first, second = compiled(x, context), compiled(x, context)
        assert counters["stats"]["unique_graphs"] == graphs  # no recompile
        assert torch.equal(first, plain) and torch.equal(second, plain)
        eager = run(model, [((x, context), {})])
    assert contract(journey) == contract(eager) and journey.layers[0].calls == 2
    assert hook_count(model) == 0 and hook_count(compiled) == 0
    with pytest.raises(shapetrace.ShapeTraceError, match="probes need every attention call"):
        with shapetrace.trace(compiled, probes=[Collect()]):
            pass


class Wrapped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from shapetrace.reference import CrossAttention

        self.attn = CrossAttention(64, 32, num_heads=4)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attn(x, context) * 2


def test_a_later_trace_of_a_compiled_model_replays_what_the_first_learned() -> None:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = Wrapped().eval()
    compiled = torch.compile(model, backend="eager")
    x, context = torch.randn(2, 10, 64), torch.randn(2, 7, 32)
    with torch.no_grad():
        plain = compiled(x, context)
        graphs = counters["stats"]["unique_graphs"]
        first, later = run(compiled, [((x, context), {})]), run(compiled, [((x, context), {})])
        assert torch.equal(compiled(x, context), plain)
    assert counters["stats"]["unique_graphs"] == graphs
    eager = run(model, [((x, context), {})])
    assert contract(first) == contract(later) == contract(eager)
    # the first trace ran an eager shadow forward, recorded and checked it; the later one ran
    # none (a replay looks at no value, so it checked nothing)
    assert first.layers[0].checked == 1 and later.layers[0].checked == 0
    assert hook_count(model) == 0 and hook_count(compiled) == 0


class Branchy(torch.nn.Module):
    """Runs one of two attention layers depending on its input's values: the same input
    signature can take either path."""

    def __init__(self) -> None:
        super().__init__()
        from shapetrace.reference import CrossAttention

        self.a = CrossAttention(16, 8, num_heads=2)
        self.b = CrossAttention(16, 8, num_heads=2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.a(x, context) if x.mean() > 0 else self.b(x, context)


def test_a_call_off_the_known_path_is_counted_not_guessed_and_the_next_is_recorded() -> None:
    model = Branchy().eval()
    context = torch.randn(1, 3, 8)
    up, down = torch.ones(1, 4, 16), -torch.ones(1, 4, 16)
    run(model, [((up, context), {})])  # learns the path through `a`
    off = run(model, [((down, context), {})])  # same signature, through `b`
    assert off.skipped == {"unrecorded": 1} and off.layers == []
    again = run(model, [((down, context), {})])  # the stale path was dropped: recorded
    assert [x.name for x in again.layers] == ["b"] and not again.skipped


class Missing:
    """A probe that keeps the calls it gets and the ones it was told it missed."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.missed: list[tuple[str, str]] = []

    def on_attention(self, call) -> None:
        self.got.append(call.layer.name)

    def on_missed(self, layer, why: str) -> None:
        self.missed.append((layer.name, why))


def test_probes_hear_of_a_call_off_the_known_path_and_get_the_next_one() -> None:
    model = Branchy().eval()
    context = torch.randn(1, 3, 8)
    up, down = torch.ones(1, 4, 16), -torch.ones(1, 4, 16)
    first, off, again = Missing(), Missing(), Missing()
    run(model, [((up, context), {})], probes=[first])  # learns the path through `a`
    run(model, [((down, context), {})], probes=[off])  # replayed light: `b` is off the path
    run(model, [((down, context), {})], probes=[again])  # the stale path was dropped
    assert first.got == ["a"] and not first.missed
    assert off.got == [] and [name for name, _ in off.missed] == ["b"]
    assert "another path" in off.missed[0][1] and "every_call=True" in off.missed[0][1]
    assert again.got == ["b"] and not again.missed


def test_a_light_replay_gives_a_store_the_maps_of_recording_every_call() -> None:
    from shapetrace.maps import AttentionStore

    built = build_model("tiny", device="cpu", seed=0)
    inputs = [built.inputs(64, 64, 2, seed=s) for s in range(3)]
    stores = [AttentionStore.for_batch(1, guidance=True, kinds=("cross", "self"))
              for _ in range(2)]
    run(built.module, inputs, every_call=True, probes=[stores[0]], monitors=False)
    attn = built.module.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    with torch.no_grad(), shapetrace.trace(built.module, probes=[stores[1]], monitors=False):
        for args, kwargs in inputs:
            built.module(*args, **kwargs)
            # the replay watched the layer's forward only: no hook on it, its q and k
            # projections' forwards wrapped to keep their outputs
            assert not attn._forward_pre_hooks and not attn._forward_hooks
            assert [hook_count(m) for m in (attn.to_q, attn.to_k, attn.to_v)] == [1, 1, 0]
            assert hasattr(attn.__dict__.get("forward"), "_shapetrace_wrap")
    every, light = stores[0].entries, stores[1].entries
    assert every.keys() == light.keys() and {k.kind for k in every} == {"cross", "self"}
    for key, entry in every.items():
        assert (light[key].calls, light[key].count) == (entry.calls, entry.count)
        torch.testing.assert_close(light[key].total, entry.total, rtol=0, atol=1e-6)
    assert hook_count(built.module) == 0


class Unreadable(torch.nn.Module):
    """Attention whose scores come from an elementwise product and a sum: no q·kᵀ to see."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = (torch.nn.Linear(8, 8) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        return self.to_out((q.unsqueeze(2) * k.unsqueeze(1)).sum(-1).softmax(-1) @ v)


class HalfReadable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.opaque = Unreadable()
        self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(*(self.opaque(x),) * 3)[0]


def test_a_layer_not_understood_is_listed_in_every_trace_not_only_the_first() -> None:
    model = HalfReadable().eval()
    inputs = [((torch.randn(1, 5, 8),), {})] * 2
    journeys = [run(model, inputs) for _ in range(3)]
    journeys.append(run(torch.compile(model, backend="eager"), inputs))
    for journey in journeys:  # the first records; later ones, and the compiled, replay
        assert [(n.name, "no score computation" in n.reason) for n in journey.not_understood] \
            == [("opaque", True)]
        assert [(x.name, x.calls) for x in journey.layers] == [("mha", 2)]


def test_a_call_the_probes_could_not_be_given_is_an_error_in_the_store() -> None:
    from shapetrace.maps import AttentionStore
    from shapetrace.tracing._fire import missed

    store = AttentionStore()
    record = run(
        build_model("reference", device="cpu").module,
        [build_model("reference", device="cpu").inputs(64, 64)],
    ).layers[0]
    missed([store], record, "a reason")
    with pytest.raises(shapetrace.ShapeTraceError, match=r"could not be captured: a reason"):
        store.check()
    assert any(c.name == "probes" and not c.ok for c in record.checks)
