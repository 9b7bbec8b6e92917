"""The golden-journey gate fails on a changed journey, naming layer, stage and shape."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from rich.console import Console

from shapetrace.regression import main

GOLDEN = Path(__file__).resolve().parent.parent / "reports" / "golden"
CASE = "sd15-256-b1"


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), console=Console(file=out, width=200, color_system=None))
    return code, out.getvalue()


def test_the_committed_golden_journey_matches_a_fresh_trace() -> None:
    code, text = _run("--golden", str(GOLDEN), "--case", CASE)
    assert code == 0, text
    assert "1 golden journeys match" in text


def test_a_changed_stage_shape_fails_and_names_layer_stage_and_shapes(tmp_path: Path) -> None:
    shutil.copy(GOLDEN / f"{CASE}.json", tmp_path)
    path = tmp_path / f"{CASE}.json"
    data = json.loads(path.read_text())
    layer = data["layers"][1]
    assert layer["kind"] == "cross"
    scores = next(s for s in layer["stages"] if s["name"] == "scores")
    scores["shape"] = [1, 8, 1024, 76]
    path.write_text(json.dumps(data))
    code, text = _run("--golden", str(tmp_path), "--case", CASE)
    assert code == 1
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2" in text
    assert "scores" in text and "(1, 8, 1024, 76)" in text and "(1, 8, 1024, 77)" in text
    assert "--overwrite" in text


def test_a_missing_layer_and_a_missing_golden_file_both_fail(tmp_path: Path) -> None:
    shutil.copy(GOLDEN / f"{CASE}.json", tmp_path)
    path = tmp_path / f"{CASE}.json"
    data = json.loads(path.read_text())
    dropped = data["layers"].pop(5)["name"]
    path.write_text(json.dumps(data))
    code, text = _run("--golden", str(tmp_path), "--case", CASE, "--case", "tiny-64-b2")
    assert code == 1
    assert dropped in text and "new" in text
    assert "golden file" in text and "missing" in text


def test_overwrite_rewrites_on_purpose_and_then_matches(tmp_path: Path) -> None:
    code, _ = _run("--golden", str(tmp_path), "--case", CASE, "--overwrite")
    assert code == 0 and (tmp_path / f"{CASE}.json").exists()
    code, text = _run("--golden", str(tmp_path), "--case", CASE)
    assert code == 0, text


def test_an_unknown_case_is_refused() -> None:
    code, text = _run("--case", "sd99")
    assert code == 2 and "unknown case(s) sd99" in text
