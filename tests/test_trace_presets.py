"""Every preset at its native size on meta: each layer's name, kind, grid, heads, head dim and
every contract stage equal the facts computed from the published config (tests/facts.py),
independently of the tracer; joint layers keep the model's own token order."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shapetrace.journey import Journey
from shapetrace.models.presets import PRESETS, read_config
from shapetrace.run import trace_model
from tests import facts
from tests._helpers import hook_count

SHARED = Path(__file__).resolve().parents[2] / "shared"

#: packaged config -> the published file it must equal, under ../shared
PUBLISHED = {
    "sd15_unet.json": "sd15/unet_config.json",
    "sd15_text_encoder.json": "sd15/text_encoder_config.json",
    "sd15_scheduler.json": "sd15/scheduler_config.json",
    "sd21_unet.json": "models/sd21/unet/config.json",
    "sd21_text_encoder.json": "models/sd21/text_encoder/config.json",
    "sd21_scheduler.json": "models/sd21/scheduler/scheduler_config.json",
    "sdxl_unet.json": "models/sdxl/unet/config.json",
    "sdxl_text_encoder.json": "models/sdxl/text_encoder/config.json",
    "sdxl_text_encoder_2.json": "models/sdxl/text_encoder_2/config.json",
    "sdxl_scheduler.json": "models/sdxl/scheduler/scheduler_config.json",
    "sd3_transformer.json": "models/sd3/transformer/config.json",
    "sd3_scheduler.json": "models/sd3/scheduler/scheduler_config.json",
    "flux_transformer.json": "models/flux-dev/transformer/config.json",
    "flux_scheduler.json": "models/flux-dev/scheduler/scheduler_config.json",
    "pixart_transformer.json": "models/pixart-alpha/transformer/config.json",
    "pixart_scheduler.json": "models/pixart-alpha/scheduler/scheduler_config.json",
}


def _published(packaged: str) -> dict[str, Any]:
    """The published config (../shared) when it is beside the checkout, else the packaged
    copy that the byte-equality test below pins to it."""
    path = SHARED / PUBLISHED[packaged]
    return json.loads(path.read_text()) if path.exists() else read_config(packaged)


FACTS: dict[str, Callable[[], list[facts.Layer]]] = {
    "sd15": lambda: facts.unet_layers(_published("sd15_unet.json"), 512, 512),
    "sd21": lambda: facts.unet_layers(_published("sd21_unet.json"), 768, 768),
    "sdxl": lambda: facts.unet_layers(_published("sdxl_unet.json"), 1024, 1024),
    "sd3": lambda: facts.sd3_layers(_published("sd3_transformer.json"), 1024, 1024),
    "flux": lambda: facts.flux_layers(_published("flux_transformer.json"), 1024, 1024),
    "pixart": lambda: facts.pixart_layers(_published("pixart_transformer.json"), 1024, 1024),
    "sd15:text_encoder": lambda: facts.clip_text_layers(_published("sd15_text_encoder.json")),
    "sd21:text_encoder": lambda: facts.clip_text_layers(_published("sd21_text_encoder.json")),
    "sdxl:text_encoder": lambda: facts.clip_text_layers(_published("sdxl_text_encoder.json")),
    "sdxl:text_encoder_2": lambda: facts.clip_text_layers(_published("sdxl_text_encoder_2.json")),
}


@pytest.mark.parametrize("packaged", sorted(PUBLISHED))
def test_every_packaged_config_is_the_published_file(packaged: str) -> None:
    path = SHARED / PUBLISHED[packaged]
    if not path.exists():
        pytest.skip(f"{path} is not beside this checkout (CI places ../shared there)")
    assert read_config(packaged) == json.loads(path.read_text())


@pytest.fixture(scope="module", params=sorted(FACTS))
def traced(request: pytest.FixtureRequest) -> tuple[str, Journey, list[facts.Layer]]:
    name = request.param
    return name, trace_model(name), FACTS[name]()


def test_the_layers_are_the_configs_layers_in_call_order(traced) -> None:
    name, journey, expected = traced
    names = [layer.name.removeprefix("text_model.") for layer in journey.layers]
    assert names == [e.name for e in expected], name
    assert not journey.not_understood and not journey.violations


def test_kinds_grids_heads_and_head_dims_come_from_the_config(traced) -> None:
    _name, journey, expected = traced
    got = [(x.kind, x.resolution, x.heads, x.head_dim) for x in journey.layers]
    assert got == [(e.kind, e.grid, e.heads, e.head_dim) for e in expected]


def test_every_stage_has_the_shape_the_config_gives(traced) -> None:
    _name, journey, expected = traced
    for layer, fact in zip(journey.layers, expected):
        for stage, shape in fact.stage_shapes(batch=1).items():
            assert layer.shape(stage) == shape, (layer.name, stage)


def test_joint_layers_keep_the_models_token_order(traced) -> None:
    _name, journey, expected = traced
    for layer, fact in zip(journey.layers, expected):
        if fact.kind != "joint":
            continue
        runs = {"hidden": fact.n, "context": fact.m}
        other = "context" if fact.query_first == "hidden" else "hidden"
        order = [(fact.query_first, runs[fact.query_first]), (other, runs[other])]
        for axis in ("query", "key"):
            assert [(s.source, s.tokens) for s in layer.segments[axis]] == order, layer.name


def test_presets_trace_their_native_size_and_leave_no_hook(traced) -> None:
    name, journey, _expected = traced
    native = PRESETS[name.partition(":")[0]].native
    if ":" not in name:
        assert (journey.height, journey.width) == native
    from shapetrace.models import build_model

    built = build_model(name)
    assert hook_count(built.module) == 0
