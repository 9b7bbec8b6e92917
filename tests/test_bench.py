"""The bench: ``python -m benchmarks --quick`` writes a JSON document whose ratios come
from its raw samples, and a Markdown table with a row per benchmark. No timing is asserted."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import SCHEMA, to_markdown
from benchmarks.__main__ import main
from benchmarks._markdown import fmt_value
from benchmarks._stats import Series, Target, compare
from benchmarks._worker import run_task

ROW_KEYS = {
    "id", "group", "title", "unit", "subject", "baseline", "ratio", "change_pct", "target",
    "met", "note", "extra",
}
SIDE_KEYS = {"label", "samples", "n", "median", "error"}
QUICK_IDS = {
    "meta_wall", "meta_cpu", "meta_wall_render", "meta_cpu_render", "meta_rss_cold",
    "meta_heap_peak", "cpu_tiny_wall", "cpu_tiny_cpu", "cpu_tiny_capture_wall",
    "cpu_tiny_capture_cpu", "cpu_tiny_bare_wall", "cpu_tiny_handed_wall", "projected_gpu_sd15",
    "compile_first_call", "compile_warm_wall",
    "compile_warm_cpu", "maps_rss_delta",
    "maps_rss_delta_uncaptured", "maps_rss_capture", "maps_time_wall", "maps_time_cpu",
    "meta_forward_sd15_wall", "meta_forward_sd15_cpu",
    "checker_module_wall", "checker_module_cpu", "checker_processor_wall",
    "checker_processor_cpu", "checker_added_kv_processor_wall", "checker_added_kv_processor_cpu",
    "maps_grad_rss", "maps_grad_saved", "maps_head_rss", "maps_head_store",
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One quick bench run through the CLI: its JSON document and its Markdown."""
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_quick_bench_document_has_the_schema_fields(quick: tuple[dict[str, Any], str]) -> None:
    doc, _ = quick
    assert doc["schema"] == SCHEMA
    assert doc["mode"] == "quick"
    machine = doc["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["ram_bytes"] > 0
    assert {"torch", "diffusers", "torchinfo"} <= set(machine["versions"])
    assert machine["date"]
    assert doc["settings"]["threads"] >= 1 and doc["duration_s"] > 0
    assert {r["id"] for r in doc["benchmarks"]} == QUICK_IDS  # quick skips SD 1.5 on CPU
    for row in doc["benchmarks"]:
        assert set(row) >= ROW_KEYS, row["id"]
        assert set(row["subject"]) >= SIDE_KEYS and set(row["baseline"]) >= SIDE_KEYS
    assert doc["errors"] == []
    assert {b["what"] for b in doc["builds"]} >= {"sd15 UNet on meta", "tiny UNet on cpu"}


def test_ratios_and_verdicts_are_computed_from_the_raw_samples(
    quick: tuple[dict[str, Any], str],
) -> None:
    doc, _ = quick
    checked = 0
    for row in doc["benchmarks"]:
        s, b = row["subject"]["samples"], row["baseline"]["samples"]
        for side, samples in (("subject", s), ("baseline", b)):
            assert row[side]["n"] == len(samples)
            want = statistics.median(samples) if samples else None
            assert row[side]["median"] == pytest.approx(want), (row["id"], side)
        if not s or not b or statistics.median(b) <= 0:
            assert row["ratio"] is None and row["met"] is None, row["id"]
            continue
        ratio = statistics.median(s) / statistics.median(b)
        assert row["ratio"] == pytest.approx(ratio), row["id"]
        assert row["change_pct"] == pytest.approx((ratio - 1) * 100), row["id"]
        if row["target"] is None:
            assert row["met"] is None
        else:
            assert row["met"] is (ratio <= row["target"]["max_ratio"]), row["id"]
        if "paired_ratio_median" in row:
            pairs = [x / y for x, y in zip(s, b)]
            assert row["paired_ratio_median"] == pytest.approx(statistics.median(pairs))
        checked += 1
    assert checked >= 8
    targets = [r for r in doc["benchmarks"] if r["target"] is not None]
    assert doc["summary"]["targets"] == len(targets)
    assert doc["summary"]["met"] == sum(r["met"] is True for r in targets)


def test_markdown_has_the_machine_and_a_row_per_benchmark(
    quick: tuple[dict[str, Any], str],
) -> None:
    doc, text = quick
    assert text.startswith("# shapetrace benchmarks\n")
    assert doc["machine"]["cpu"] in text and "torch " in text and "diffusers " in text
    assert "| id | benchmark | subject (median) | baseline (median) | ratio | target |" in text
    for row in doc["benchmarks"]:
        assert f"| `{row['id']}` |" in text
    assert text == to_markdown(doc)


def test_a_row_without_baseline_samples_has_no_ratio_and_shows_the_error() -> None:
    row = compare(
        "meta_wall", "demo", Series("shapetrace.trace", [0.2, 0.3]),
        Series("torchinfo.summary", [], error="RuntimeError: Failed to run torchinfo"),
        unit="s", target=Target(1.0, "no slower"),
    )
    assert row["ratio"] is None and row["met"] is None
    assert row["subject"]["median"] == pytest.approx(0.25)
    doc = {
        "machine": {"cpu": "X", "cores": 2, "usable_cores": 2, "ram_bytes": 2**30, "os": "L",
                    "python": "3", "versions": {}, "date": "d"},
        "settings": {"threads": 1, "isolated": True}, "mode": "full", "duration_s": 1.0,
        "load_average": {}, "benchmarks": [row], "builds": [], "errors": [],
        "summary": {"targets": 1, "met": 0, "missed": [], "unmeasured": ["meta_wall"]},
    }
    text = to_markdown(doc)
    assert "error: RuntimeError: Failed to run torchinfo" in text
    assert "not measured" in text


def test_compare_takes_the_ratio_of_medians_and_checks_the_target() -> None:
    row = compare("x", "t", Series("a", [3.0, 1.0, 2.0]), Series("b", [1.0, 2.0, 4.0]),
                  unit="s", target=Target(1.05, "5%"), paired=True)
    assert row["ratio"] == pytest.approx(1.0) and row["met"] is True
    assert row["paired_ratio_median"] == pytest.approx(0.5)  # median of 3/1, 1/2, 2/4


def test_values_are_formatted_with_their_unit() -> None:
    assert fmt_value(0.0123, "s") == "12.3 ms"
    assert fmt_value(2.5, "s") == "2.500 s"
    assert fmt_value(5 * 1024 * 1024, "bytes") == "5.00 MiB"
    assert fmt_value(None, "s") == "—"


def test_a_failing_task_becomes_an_error_entry_not_a_crash() -> None:
    result = run_task({"task": "no_such_task", "args": {"x": 1}})
    assert result["task"] == "no_such_task" and result["args"] == {"x": 1}
    assert result["error"].startswith("KeyError")


def test_cli_rejects_a_thread_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["--threads", "0", "--out", str(Path("unused"))])
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err


def test_the_idle_probe_of_the_breakdown_got_every_cross_call(
    quick: tuple[dict[str, Any], str],
) -> None:
    """The hand-over row measures what it says: its probe was given each cross-attention
    call (diffusers' attn2 modules) of every forward it timed, and did nothing with them."""
    from shapetrace.models import build_model

    doc, _ = quick
    row = next(r for r in doc["benchmarks"] if r["id"] == "cpu_tiny_handed_wall")
    module = build_model("tiny", device="meta").module
    cross = sum(1 for name, _m in module.named_modules() if name.endswith("attn2"))
    case = doc["settings"]["cpu_cases"][0]
    pairs, warmup = case[4], case[5]
    assert cross > 0
    assert row["extra"]["probe_calls"] == cross * (pairs + warmup)
    assert row["extra"]["added_s"] == pytest.approx(
        row["subject"]["median"] - row["baseline"]["median"]
    )
