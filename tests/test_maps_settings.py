"""Every store setting is checked at construction: the argument, the value and the fix."""

from __future__ import annotations

import pytest

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps import AttentionStore, RowLabel, batch_rows
from shapetrace.maps.recipes import attend_excite_store, daam_store, ledits_store, p2p_store


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"places": ["middle"]}, r"places=\['middle'\]: 'middle' is not one of .*'mid'"),
        ({"places": ["down", "upp"]}, r"'upp' is not one of .*did you mean 'up'"),
        ({"places": []}, r"places=\(\): an empty places keeps nothing"),
        ({"places": 3}, r"places=3: pass names from down, mid, up"),
        ({"kinds": ["crosss"]}, r"'crosss' is not one of cross, self, joint.*'cross'"),
        ({"resolutions": [0, -16]}, r"resolutions=\[0, -16\]: 0 is not a grid"),
        ({"resolutions": [(16, 0)]}, r"\(16, 0\) is not a grid"),
        ({"resolutions": [True]}, r"True is not a grid"),
        ({"resolutions": 16}, r"resolutions=16: pass a list of sides"),
        ({"resolutions": []}, r"resolutions=\[\]: an empty list keeps no map; pass None"),
        ({"keep": "uncond"}, r"keep='uncond': keep is one of 'cond', 'all'"),
        ({"window": "steps"}, r"window='steps': window is one of .*did you mean 'step'"),
        ({"detail": "heads"}, r"detail='heads': .*did you mean 'head'"),
        ({"grad": 1}, r"grad=1: grad is True or False"),
        ({"rows": []}, r"rows=\[\]: pass a non-empty sequence of RowLabel"),
        ({"rows": ["cond"]}, r"rows\[0\]='cond' is not a RowLabel"),
        ({"rows": [RowLabel(1, "cond", 0, 0)]}, r"rows\[0\]=row 1: .*numbered 0, 1"),
    ],
)
def test_a_bad_setting_is_refused_at_construction_naming_it(settings, message):
    with pytest.raises(InputShapeError, match=message):
        AttentionStore(**settings)


def test_the_issue_example_is_refused_before_any_forward():
    with pytest.raises(InputShapeError, match=r"places=\['middle'\].*did you mean 'mid'"):
        AttentionStore(places=["middle"], resolutions=[0, -16])
    with pytest.raises(InputShapeError, match=r"resolutions=\[0, -16\]"):
        AttentionStore(places=["mid"], resolutions=[0, -16])


def test_good_settings_are_kept_normalized():
    store = AttentionStore(places="up", kinds=("cross", "cross"), resolutions=[16, (12, 20)])
    assert store.places == ("up",) and store.kinds == ("cross",)
    assert store.resolutions == {(16, 16), (12, 20)}
    assert "window='run'" in repr(store) and "detail='resolution'" in repr(store)


def test_the_default_store_keeps_cross_and_joint_layers_of_every_image_place():
    store = AttentionStore()
    assert store.kinds == ("cross", "joint")
    assert set(store.places) == {"down", "mid", "up", "transformer", "single", "model"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: batch_rows(0), r"prompts=0: need a whole number >= 1"),
        (lambda: batch_rows(1, images_per_prompt=True), r"images_per_prompt=True"),
        (lambda: batch_rows(1, guidance=False, shared_uncond=True), r"shared_uncond=True needs"),
        (lambda: AttentionStore.for_batch(2.5), r"prompts=2\.5: need a whole number"),
        (lambda: ledits_store(edits=0), r"prompts=0"),
        (lambda: attend_excite_store(res=0), r"res=0: a map resolution is a side >= 1"),
        (lambda: daam_store(window="forward"), r"daam_store\(window='forward'\): .*'run'"),
        (lambda: p2p_store(window="step"), r"p2p_store\(window='step'\): the recipe sets"),
        (lambda: ledits_store(resolutions=[8]), r"ledits_store\(resolutions=\[8\]\)"),
    ],
)
def test_recipe_and_row_settings_are_checked_too(call, message):
    with pytest.raises(InputShapeError, match=message):
        call()


def test_recipe_stores_are_set_up_as_each_peer_needs():
    ae = attend_excite_store()
    assert (ae.window, ae.grad, ae.rows) == ("forward", True, None)
    assert {"up", "down", "mid"} <= set(ae.places)
    led = ledits_store(edits=2)
    assert led.window == "step" and "mid" not in led.places
    assert [str(r) for r in led.rows] == [
        "row 0: uncond (shared) image 0",
        "row 1: cond prompt 0 image 0",
        "row 2: cond prompt 1 image 0",
    ]
    assert (daam_store().detail, daam_store().window) == ("head", "run")
    assert p2p_store(prompts=2).window == "run"


def test_a_shared_unconditional_row_answers_for_every_prompt():
    store = AttentionStore.for_batch(2, guidance=True, shared_uncond=True, keep="all")
    assert store.row_position(1, branch="uncond") == 0
    assert store.row_position(1) == 2
    with pytest.raises(ShapeTraceError, match=r"no stored row for prompt 2"):
        store.row_position(2)
