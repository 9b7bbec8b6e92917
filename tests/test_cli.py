"""The ``shapetrace`` command line: argument handling and errors with a stand-in tracer, then
end to end on the meta device against seed 002's table."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import shapetrace
from shapetrace import cli
from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.journey import Journey, LayerRecord, Stage

FIRST_CROSS = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
FIRST_SELF = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def layer(name: str, kind: str, *, batch: int = 1, grid: tuple[int, int] = (32, 32)) -> LayerRecord:
    """A layer call as the tracer records one: SD 1.5's first level, 8 heads of 40."""
    n = grid[0] * grid[1]
    m = 77 if kind == "cross" else n
    stages = [
        Stage("feature_map", (batch, 320, *grid)),
        Stage("input", (batch, n, 320)),
        *([Stage("context", (batch, 77, 768))] if kind == "cross" else []),
        Stage("query", (batch, n, 320)),
        Stage("key", (batch, m, 320)),
        Stage("value", (batch, m, 320)),
        Stage("query_heads", (batch, 8, n, 40)),
        Stage("key_heads", (batch, 8, m, 40)),
        Stage("value_heads", (batch, 8, m, 40)),
        Stage("scores", (batch, 8, n, m), derived=True),
        Stage("probs", (batch, 8, n, m), derived=True),
        Stage("attended", (batch, 8, n, 40)),
        Stage("merged", (batch, n, 320)),
        Stage("output", (batch, n, 320)),
    ]
    place = "up" if name.startswith("up") else "down"
    return LayerRecord(name, kind, place, grid, "AttnProcessor2_0", 8, 40, stages)


def fake_journey(**kwargs: Any) -> Journey:
    names = [FIRST_SELF, FIRST_CROSS]
    names += [
        f"up_blocks.3.attentions.{i}.transformer_blocks.0.attn{k}" for i in (0, 1) for k in (1, 2)
    ]
    layers = [layer(n, "self" if n.endswith("attn1") else "cross") for n in names]
    return Journey(layers=layers, model="sd15", height=256, width=256, batch=1, device="meta")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace ``shapetrace.trace_model`` by a stand-in; the list collects its calls."""
    seen: list[dict[str, Any]] = []

    def trace_model(model: str = "sd15", **kwargs: Any) -> Journey:
        seen.append({"model": model, **kwargs})
        return fake_journey()

    monkeypatch.setattr(shapetrace, "trace_model", trace_model)
    monkeypatch.setenv("COLUMNS", "200")
    return seen


def failing_tracer(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def trace_model(*args: Any, **kwargs: Any) -> Journey:
        raise error

    monkeypatch.setattr(shapetrace, "trace_model", trace_model)


# --- arguments ------------------------------------------------------------------------------


def test_trace_defaults_are_sd15_at_512_batch_1_on_meta(calls: list[dict[str, Any]]) -> None:
    import torch

    assert cli.main(["trace"]) == 0
    assert calls == [
        {
            "model": "sd15",
            "height": 512,
            "width": 512,
            "batch": 1,
            "device": "meta",
            "processor": None,
            "dtype": torch.float32,
        }
    ]


def test_trace_passes_every_option_to_the_tracer(calls: list[dict[str, Any]]) -> None:
    import torch

    argv = ["trace", "--model", "tiny", "--height", "256", "--width", "384", "--batch", "2"]
    argv += ["--device", "cpu", "--processor", "AttnProcessor", "--dtype", "bfloat16"]
    assert cli.main(argv) == 0
    assert calls[0] == {
        "model": "tiny",
        "height": 256,
        "width": 384,
        "batch": 2,
        "device": "cpu",
        "processor": "AttnProcessor",
        "dtype": torch.bfloat16,
    }


def test_trace_prints_header_summary_explainer_and_first_cross_journey(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace"]) == 0
    out = capsys.readouterr().out
    assert "6 attention layers: 3 self, 3 cross" in out
    assert "down.0.0.attn2" in out
    assert "(1, 320, 32, 32) → (1, 1024, 320), holds at this size" in out
    assert f"Journey: {FIRST_CROSS}" in out
    assert out.count("Journey: ") == 1


@pytest.mark.parametrize(
    ("argv", "journeys"),
    [
        (["--layer", "down.0.0.attn1"], [FIRST_SELF]),
        (["--layer", FIRST_CROSS], [FIRST_CROSS]),
        (["--layer", "up.3.1.attn2", "down.0.0.attn2"], [FIRST_CROSS, "up_blocks.3.attentions.1"]),
        (
            ["--layer", "up_blocks.3", "--kind", "cross"],
            ["up_blocks.3.attentions.0", "up_blocks.3.attentions.1"],
        ),
        (
            ["--all"],
            [FIRST_SELF, FIRST_CROSS, "up_blocks.3", "up_blocks.3", "up_blocks.3", "up_blocks.3"],
        ),
        (["--kind", "self"], [FIRST_SELF]),
    ],
)
def test_layer_all_and_kind_choose_the_journeys_shown(
    calls: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    journeys: list[str],
) -> None:
    assert cli.main(["trace", *argv]) == 0
    titles = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Journey: ")]
    assert len(titles) == len(journeys)
    for title, name in zip(titles, journeys, strict=True):
        assert title.startswith(f"Journey: {name}")


def test_kind_narrows_the_summary_table(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace", "--kind", "self"]) == 0
    out = capsys.readouterr().out
    assert "down.0.0.attn1" in out
    assert "down.0.0.attn2" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace", "--height", "0"], "argument --height: must be at least 1, got 0"),
        (["trace", "--width", "wide"], "argument --width: expected a whole number, got 'wide'"),
        (["trace", "--batch", "-1"], "argument --batch: must be at least 1, got -1"),
        (["trace", "--device", "tpu"], "argument --device: expected meta, cpu, cuda or cuda:N"),
        (["trace", "--processor", "XFormers"], "argument --processor: invalid choice"),
        (["trace", "--kind", "both"], "argument --kind: invalid choice"),
        (["trace", "--all", "--layer", "x"], "argument --layer: not allowed with argument --all"),
        ([], "the following arguments are required: COMMAND"),
        (["paint"], "invalid choice: 'paint'"),
    ],
)
def test_bad_arguments_exit_2_with_argparse_usage(
    calls: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert calls == []


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "trace" in capsys.readouterr().out
    assert cli.main(["trace", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--height", "--width", "--batch", "--device", "--processor"):
        assert flag in out
    for flag in ("--layer", "--all", "--kind", "--json", "--markdown", "--dtype"):
        assert flag in out


# --- errors ---------------------------------------------------------------------------------


def test_a_shapetrace_error_is_one_line_on_stderr_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failing_tracer(monkeypatch, InputShapeError("context (1, 77, 768) does not\nfit width 64"))
    assert cli.main(["trace", "--height", "256"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "shapetrace: error: context (1, 77, 768) does not fit width 64\n"
    assert captured.out == ""


def test_other_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    failing_tracer(monkeypatch, RuntimeError("a bug in shapetrace"))
    with pytest.raises(RuntimeError, match="a bug in shapetrace"):
        cli.main(["trace"])


def test_an_unknown_layer_is_a_one_line_error(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace", "--layer", "attn9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shapetrace: error: --layer attn9: no traced attention layer matches")
    assert err.count("\n") == 1


def test_an_output_in_a_missing_folder_fails_before_tracing(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "nowhere" / "j.json"
    assert cli.main(["trace", "--json", str(target)]) == 2
    assert f"--json {target}: folder {target.parent} does not exist" in capsys.readouterr().err
    assert calls == []


def test_both_outputs_on_stdout_is_refused(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace", "--json", "-", "--markdown", "-"]) == 2
    assert "both want stdout" in capsys.readouterr().err


# --- outputs --------------------------------------------------------------------------------


def test_json_and_markdown_files_are_written(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    js, md = tmp_path / "j.json", tmp_path / "r.md"
    assert cli.main(["trace", "--json", str(js), "--markdown", str(md)]) == 0
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["schema"] == "shapetrace.journey/1"
    assert [x["name"] for x in data["layers"]][:2] == [FIRST_SELF, FIRST_CROSS]
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# shapetrace: sd15 at 256×256")
    assert "## Journey: down\\_blocks.0.attentions.0.transformer\\_blocks.0.attn2" in text
    err = capsys.readouterr().err
    assert f"wrote the JSON journey to {js}" in err
    assert f"wrote the Markdown report to {md}" in err


def test_json_to_stdout_replaces_the_console_report(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["layers"]) == 6


def test_markdown_to_stdout_replaces_the_console_report(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace", "--markdown", "-", "--all"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# shapetrace: ")
    assert out.count("## Journey: ") == 6


# --- subcommands from other parts -----------------------------------------------------------


def test_registered_subcommands_are_added_and_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = types.ModuleType("shapetrace_fake_sub")

    def run(args: Any) -> int:
        print(f"hello {args.who}")
        return 0

    def register(subparsers: Any) -> None:
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--who", default="world")
        p.set_defaults(func=run)

    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shapetrace_fake_sub", module)
    monkeypatch.setattr(cli, "_SUBCOMMANDS", ("shapetrace_fake_sub", "shapetrace.not_written_yet"))
    assert cli.main(["hello", "--who", "attention"]) == 0
    assert capsys.readouterr().out == "hello attention\n"


def test_a_subcommand_module_with_a_broken_import_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "shapetrace_broken_sub.py").write_text("import not_a_real_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_SUBCOMMANDS", ("shapetrace_broken_sub",))
    with pytest.raises(ModuleNotFoundError, match="not_a_real_dependency"):
        cli.main(["trace", "--help"])


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shapetrace", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "trace" in done.stdout


# --- end to end on the meta device ----------------------------------------------------------

SEED_002 = {
    "feature_map": [1, 320, 32, 32],
    "input": [1, 1024, 320],
    "context": [1, 77, 768],
    "query": [1, 1024, 320],
    "key": [1, 77, 320],
    "value": [1, 77, 320],
    "query_heads": [1, 8, 1024, 40],
    "key_heads": [1, 8, 77, 40],
    "value_heads": [1, 8, 77, 40],
    "scores": [1, 8, 1024, 77],
    "probs": [1, 8, 1024, 77],
    "attended": [1, 8, 1024, 40],
    "merged": [1, 1024, 320],
    "output": [1, 1024, 320],
}


def traced(tmp_path: Path, *argv: str) -> dict[str, Any]:
    """Run ``shapetrace trace ARGV --json FILE`` for real and return the JSON."""
    out = tmp_path / "journey.json"
    assert cli.main(["trace", *argv, "--json", str(out)]) == 0
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return data


def first_cross(data: dict[str, Any]) -> dict[str, Any]:
    return next(x for x in data["layers"] if x["kind"] == "cross")


def stage_shapes(layer_json: dict[str, Any]) -> dict[str, list[int]]:
    return {s["name"]: s["shape"] for s in layer_json["stages"]}


def test_sd15_at_256_gives_seed_002s_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    data = traced(tmp_path, "--height", "256", "--width", "256")
    assert (data["model"], data["height"], data["width"]) == ("sd15", 256, 256)
    assert len(data["layers"]) == 32
    layer_json = first_cross(data)
    assert layer_json["name"] == FIRST_CROSS
    assert (layer_json["heads"], layer_json["head_dim"]) == (8, 40)
    shapes = stage_shapes(layer_json)
    assert {k: shapes.get(k) for k in SEED_002} == SEED_002
    out = capsys.readouterr().out
    assert "32 attention layers: 16 self, 16 cross" in out
    assert "(1, 320, 32, 32) → (1, 1024, 320), holds at this size" in out
    assert "softmax over the last axis, the 77 keys" in " ".join(out.split())


def test_sd15_at_512_by_768_takes_the_grid_from_the_geometry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    data = traced(tmp_path, "--height", "512", "--width", "768", "--kind", "cross")
    layer_json = first_cross(data)
    assert layer_json["resolution"] == [64, 96]
    assert stage_shapes(layer_json)["query"] == [1, 6144, 320]
    assert sorted({tuple(x["resolution"]) for x in data["layers"]}, reverse=True) == [
        (64, 96),
        (32, 48),
        (16, 24),
        (8, 12),
    ]
    out = " ".join(capsys.readouterr().out.split())
    assert "latent 64×96 (÷8) → attention grids 64×96, 32×48, 16×24, 8×12" in out
    assert "at 512×768 the 320-channel level has 64×96 = 6144 tokens" in out


def test_sd15_batch_2_puts_2_in_front_of_every_shape(tmp_path: Path) -> None:
    data = traced(tmp_path, "--height", "256", "--width", "256", "--batch", "2")
    shapes = stage_shapes(first_cross(data))
    assert shapes["context"] == [2, 77, 768]
    assert shapes["probs"] == [2, 8, 1024, 77]
    assert all(s["shape"][0] == 2 for x in data["layers"] for s in x["stages"])


def test_attn_processor_records_its_folded_layout(tmp_path: Path) -> None:
    data = traced(tmp_path, "--height", "256", "--width", "256", "--processor", "AttnProcessor")
    probs = next(s for s in first_cross(data)["stages"] if s["name"] == "probs")
    assert probs["shape"] == [1, 8, 1024, 77]
    assert probs["raw_shape"] == [8, 1024, 77]
    assert not probs.get("derived", False)


def test_a_height_not_divisible_by_8_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["trace", "--height", "500"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("shapetrace: error: ")
    assert "500" in captured.err
    assert captured.err.count("\n") == 1
    assert captured.out == ""


def test_cuda_without_a_gpu_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["trace", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shapetrace: error: ")
    assert "cuda" in err.lower()
    assert err.count("\n") == 1


def test_the_reference_model_reports_text_layers_without_a_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    data = traced(tmp_path, "--model", "reference", "--height", "256", "--width", "256")
    assert any(x["resolution"] is None for x in data["layers"])
    assert stage_shapes(first_cross(data))["scores"] == [1, 8, 1024, 77]
    assert "show —" in capsys.readouterr().out


def test_errors_from_the_tracer_are_shapetrace_errors() -> None:
    # The CLI's error path relies on this: what users get wrong is a ShapeTraceError.
    with pytest.raises(ShapeTraceError, match="500"):
        shapetrace.trace_model("sd15", height=500, width=512)


@pytest.mark.cuda
def test_trace_runs_on_cuda_with_real_values(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    data = traced(
        tmp_path, "--model", "tiny", "--device", "cuda", "--height", "64", "--width", "64"
    )
    assert data["device"] == "cuda"
    layer_json = first_cross(data)
    assert layer_json["resolution"] == [8, 8]
    assert all(check["ok"] for x in data["layers"] for check in x["checks"])


def test_real_values_on_cpu_show_the_runtime_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    data = traced(tmp_path, "--model", "tiny", "--device", "cpu", "--height", "64", "--width", "64")
    assert data["layers"][0]["checks"]
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "down.0.0.attn2" in line)
    assert row.split()[-1] == "✓"
