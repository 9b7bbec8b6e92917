"""The SD 1.5 journey on meta, layer by layer and stage by stage, against DESIGN.md's table."""

from __future__ import annotations

import re

import pytest

from shapetrace import trace_model
from shapetrace.journey import LayerRecord

# The facts: SD 1.5 channels per level, and which blocks sit at which level.
CHANNELS = (320, 640, 1280, 1280)
HEADS = 8
CONTEXT = (77, 768)
CROSS_LAYOUT = ["down.0"] * 2 + ["down.1"] * 2 + ["down.2"] * 2 + ["mid"] + \
    ["up.1"] * 3 + ["up.2"] * 3 + ["up.3"] * 3


def level_of(name: str) -> int:
    if name.startswith("mid_block"):
        return 3
    match = re.match(r"(down|up)_blocks\.(\d)\.", name)
    assert match, name
    block = int(match.group(2))
    return block if match.group(1) == "down" else 3 - block


def expected_stages(layer: LayerRecord, height: int, width: int, batch: int) -> dict[str, tuple]:
    level = level_of(layer.name)
    h, w = height // 8 // 2**level, width // 8 // 2**level
    c = CHANNELS[level]
    n = h * w
    m = CONTEXT[0] if layer.kind == "cross" else n
    d = c // HEADS
    out = {
        "feature_map": (batch, c, h, w),
        "input": (batch, n, c),
        "query": (batch, n, c),
        "key": (batch, m, c),
        "value": (batch, m, c),
        "query_heads": (batch, HEADS, n, d),
        "key_heads": (batch, HEADS, m, d),
        "value_heads": (batch, HEADS, m, d),
        "scores": (batch, HEADS, n, m),
        "probs": (batch, HEADS, n, m),
        "attended": (batch, HEADS, n, d),
        "merged": (batch, n, c),
        "output": (batch, n, c),
    }
    if layer.kind == "cross":
        out["context"] = (batch, *CONTEXT)
    return out


SIZES = [(256, 256), (512, 512), (512, 768)]


@pytest.mark.parametrize("processor", ["AttnProcessor2_0", "AttnProcessor"])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_every_sd15_layer_matches_the_design_table(processor: str, height: int, width: int) -> None:
    journey = trace_model("sd15", height=height, width=width, processor=processor)
    assert len(journey.layers) == 32
    assert len(journey.cross) == 16 and len(journey.self_attention) == 16
    places = [
        f"{layer.place}.{layer.name.split('.')[1]}" if layer.place != "mid" else "mid"
        for layer in journey.cross
    ]
    assert places == CROSS_LAYOUT
    for layer in journey.layers:
        want = expected_stages(layer, height, width, batch=1)
        got = {s.name: s.shape for s in layer.stages}
        assert got == want, f"{layer.name}: {got} != {want}"
        level = level_of(layer.name)
        assert layer.resolution == (height // 8 // 2**level, width // 8 // 2**level)
        assert layer.heads == HEADS and layer.head_dim == CHANNELS[level] // HEADS
        assert layer.processor == processor
        assert layer.scale == pytest.approx((CHANNELS[level] // HEADS) ** -0.5)
        assert layer.ok, [c for c in layer.checks if not c.ok]


def test_seed_002_numbers_hold_at_256x256() -> None:
    layer = trace_model("sd15", height=256, width=256).cross[0]
    assert [(s.name, s.shape) for s in layer.stages] == [
        ("feature_map", (1, 320, 32, 32)),
        ("input", (1, 1024, 320)),
        ("context", (1, 77, 768)),
        ("query", (1, 1024, 320)),
        ("key", (1, 77, 320)),
        ("value", (1, 77, 320)),
        ("query_heads", (1, 8, 1024, 40)),
        ("key_heads", (1, 8, 77, 40)),
        ("value_heads", (1, 8, 77, 40)),
        ("scores", (1, 8, 1024, 77)),
        ("probs", (1, 8, 1024, 77)),
        ("attended", (1, 8, 1024, 40)),
        ("merged", (1, 1024, 320)),
        ("output", (1, 1024, 320)),
    ]
    assert layer.stage("key").op == "linear 768→320 (to_k)"
    assert layer.stage("probs").derived and layer.stage("scores").derived


def test_the_320_channel_level_has_4096_tokens_at_512() -> None:
    layer = trace_model("sd15").cross[0]
    assert layer.shape("feature_map") == (1, 320, 64, 64)
    assert layer.shape("scores") == (1, 8, 4096, 77)


def test_non_square_resolution_comes_from_the_geometry() -> None:
    journey = trace_model("sd15", height=512, width=768)
    grids = sorted({layer.resolution for layer in journey.cross if layer.resolution})
    assert grids == [(8, 12), (16, 24), (32, 48), (64, 96)]
    assert journey.cross[0].tokens == 64 * 96


def test_materialized_probabilities_keep_their_raw_batch_major_layout() -> None:
    layer = trace_model("sd15", height=256, width=256, batch=2, processor="AttnProcessor").cross[0]
    probs = layer.stage("probs")
    assert probs.shape == (2, 8, 1024, 77)
    assert probs.raw_shape == (16, 1024, 77)
    assert "batch-major" in probs.layout
    assert not probs.derived
    assert probs.op == "softmax(dim=-1)"


def test_batch_two_under_guidance_doubles_every_batch_axis() -> None:
    journey = trace_model("sd15", height=256, width=256, batch=2)
    for layer in journey.layers:
        for stage in layer.stages:
            assert stage.shape[0] == 2, (layer.name, stage)


def test_the_journey_round_trips_through_json() -> None:
    from shapetrace.journey import Journey

    journey = trace_model("sd15", height=256, width=256)
    again = Journey.from_json(journey.to_json())
    assert again.to_dict() == journey.to_dict()
    data = journey.to_dict()
    assert data["schema"] == "shapetrace.journey/1"
    keys = {"name", "kind", "place", "resolution", "processor", "heads", "head_dim", "stages"}
    assert keys <= set(data["layers"][0])


@pytest.mark.slow
def test_a_real_sd15_forward_on_cpu_is_unchanged_by_tracing_and_passes_every_check() -> None:
    import torch

    import shapetrace
    from shapetrace.models import build_model

    built = build_model("sd15", device="cpu", seed=0)
    args, kwargs = built.inputs(256, 256, batch=2, seed=1)
    with torch.no_grad():
        plain = built.module(*args, **kwargs).sample
        with shapetrace.trace(built.module) as journey:
            traced = built.module(*args, **kwargs).sample
    assert torch.equal(plain, traced)
    assert len(journey.layers) == 32 and not journey.violations
    names = {c.name for layer in journey.layers for c in layer.checks}
    assert {"softmax_axis", "heads_x_head_dim", "scale", "finite"} <= names
    for layer in journey.layers:
        want = expected_stages(layer, 256, 256, batch=2)
        assert {s.name: s.shape for s in layer.stages} == want, layer.name
