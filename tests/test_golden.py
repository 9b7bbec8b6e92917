"""Golden journeys: every case's fresh trace matches its file in ``reports/golden/``.

``pytest tests/test_golden.py --overwrite`` (``nox -s regression -- --overwrite``) rewrites the
files on purpose; the gate itself fails on a changed stage shape, a dropped layer and a missing
file, naming the case, layer, stage and both shapes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shapetrace.run import trace_model
from tests.golden import CASES, GOLDEN_DIR, Case, compare_file, diff_table, write_file

SD15_256 = next(c for c in CASES if c.name == "sd15-256-b1")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_fresh_journey_matches_its_golden_file(case: Case, overwrite: bool) -> None:
    journey = case.run(trace_model)
    if overwrite:
        write_file(journey, case.path())
        return
    changes = compare_file(case, journey, case.path())
    assert not changes, (
        f"The dimension journey changed:\n{diff_table(changes)}\nIf the change is intended, "
        "rewrite the goldens with `nox -s regression -- --overwrite` and commit them."
    )


def test_every_golden_file_belongs_to_a_case() -> None:
    names = {c.name for c in CASES}
    stray = sorted(p.stem for p in GOLDEN_DIR.glob("*.json") if p.stem not in names)
    assert not stray, f"golden files with no case in tests/golden.py: {stray}"


def _edited_golden(tmp_path: Path, edit) -> Path:
    path = tmp_path / f"{SD15_256.name}.json"
    shutil.copy(SD15_256.path(), path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_a_changed_stage_shape_is_a_change_naming_layer_stage_and_shapes(
    tmp_path: Path,
) -> None:
    def edit(data):
        layer = data["layers"][1]
        assert layer["kind"] == "cross"
        scores = next(s for s in layer["stages"] if s["name"] == "scores")
        scores["shape"] = [1, 8, 1024, 76]

    path = _edited_golden(tmp_path, edit)
    text = diff_table(compare_file(SD15_256, SD15_256.run(trace_model), path))
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2" in text
    assert "scores" in text and "(1, 8, 1024, 76)" in text and "(1, 8, 1024, 77)" in text


def test_a_dropped_layer_and_a_missing_file_are_changes(tmp_path: Path) -> None:
    dropped: list[str] = []
    path = _edited_golden(tmp_path, lambda data: dropped.append(data["layers"].pop(5)["name"]))
    journey = SD15_256.run(trace_model)
    text = diff_table(compare_file(SD15_256, journey, path))
    assert dropped[0] in text and "new" in text
    missing = compare_file(SD15_256, journey, tmp_path / "nothing.json")
    assert [(c.field, c.golden) for c in missing] == [("golden file", "missing")]


def test_a_rewritten_golden_matches_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    journey = SD15_256.run(trace_model)
    write_file(journey, path)
    assert compare_file(SD15_256, SD15_256.run(trace_model), path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["case.json"]
