"""The README as a user runs it: every Python snippet runs as written, every ``shapetrace``
command in it exits as it says, its refusal examples print what it shows, and its numbers
come from a command (the trace, the benchmarks in reports/bench.json)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from shapetrace.cli import main
from tests._folders import save_tiny

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else len(README)]


def _blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def _commands(block: str) -> list[list[str]]:
    """The ``shapetrace ...`` lines of a block, comments dropped, as argv lists."""
    lines = [line.split("  #")[0].strip().removeprefix("$ ") for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("shapetrace ")]


PYTHON = _blocks("python")


@pytest.mark.parametrize("snippet", PYTHON, ids=[f"python {i + 1}" for i in range(len(PYTHON))])
def test_every_python_snippet_runs_as_written(snippet: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {"__name__": "readme"})


def test_the_map_snippet_gives_the_shape_its_comment_says() -> None:
    snippet = next(s for s in PYTHON if "AttentionStore.for_batch" in s)
    namespace: dict[str, object] = {}
    exec(compile(snippet.replace("aggregate(store, 8", "result = aggregate(store, 8"), "README",
                 "exec"), namespace)  # fmt: skip
    assert tuple(namespace["result"]) == (8, 8, 77)  # type: ignore[call-overload]


TRACE_LINES = _commands(_blocks("bash", _section("What the trace shows"))[0])


@pytest.mark.parametrize("argv", TRACE_LINES, ids=[" ".join(a)[:60] for a in TRACE_LINES])
def test_every_trace_command_in_the_readme_exits_0(argv, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    if "./my-unet-folder" in argv:
        save_tiny(tmp_path / "my-unet-folder")
    assert main(argv) == 0, capsys.readouterr().err


def test_the_trace_section_names_its_layers_and_the_cpu_line_it_prints(capsys) -> None:
    assert main(["trace"]) == 0
    assert "32 attention layers: 16 self, 16 cross" in capsys.readouterr().out
    assert "all 32 attention layers (16 self,\n16 cross)" in README
    quoted = re.search(r"`(tracing tiny on cpu needs about [^`]+)`", README)
    assert quoted is not None
    assert main(["trace", "--model", "tiny", "--device", "cpu", "--all"]) == 0
    assert " ".join(quoted.group(1).split()) in capsys.readouterr().err


def test_the_512_table_is_what_the_trace_records() -> None:
    import shapetrace

    journey = shapetrace.trace_model("sd15", height=512, width=512)
    row = r"^\| (\d) \| (\d+)x(\d+) \| (\d+) \| (\d+) \| (\d+) x (\d+) \|"
    rows = re.findall(row, README, flags=re.M)
    assert len(rows) == 4
    for level, h, w, tokens, channels, heads, head_dim in rows:
        layer = next(x for x in journey.cross if list(x.resolution) == [int(h), int(w)])
        assert layer.shape("query")[1:] == (int(tokens), int(channels)), level
        assert (layer.heads, layer.head_dim) == (int(heads), int(head_dim)), level


MAPS_LINES = _commands(_blocks("bash", _section("Per-token attention maps"))[0])


def test_the_tiny_maps_command_in_the_readme_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = next(a for a in MAPS_LINES if "tiny" in a)
    assert main([*argv, "--quiet"]) == 0, capsys.readouterr().err
    assert (tmp_path / "maps" / "summary.json").is_file()


def test_the_sd15_maps_plan_is_what_the_readme_quotes() -> None:
    import argparse

    from shapetrace.maps._preflight import plan_run
    from shapetrace.maps.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    argv = next(a for a in MAPS_LINES if "sd15" in a)
    plan = plan_run(parser.parse_args(argv))
    text = " ".join(_section("Per-token attention maps").split())
    assert f"`{plan.forwards} UNet forwards of batch {plan.batch}`" in text
    assert f"`needs {plan.estimate.memory_text()}`" in text


@pytest.mark.slow
def test_the_sd15_maps_command_in_the_readme_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = next(a for a in MAPS_LINES if "sd15" in a)
    assert main([*argv, "--quiet"]) == 0, capsys.readouterr().err


REFUSALS = re.findall(r"^\$ (shapetrace .*)\n(shapetrace: error: .*)$",
                      _blocks("console")[0], flags=re.M)  # fmt: skip


@pytest.mark.parametrize(("command", "shown"), REFUSALS, ids=[c for c, _ in REFUSALS])
def test_every_refusal_in_the_readme_prints_what_it_shows(
    command, shown, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 2
    err = capsys.readouterr().err.strip()
    pattern = ".*".join(re.escape(part) for part in shown.split("..."))
    assert re.fullmatch(pattern, err), err
    assert list(tmp_path.iterdir()) == []


def _bench(benchmark: str) -> dict:
    data = json.loads((ROOT / "reports" / "bench.json").read_text())
    found: dict = next(b for b in data["benchmarks"] if b["id"] == benchmark)
    return found


def test_the_costs_in_the_readme_are_the_benchmarks() -> None:
    costs = " ".join(_section("What it costs").split())
    meta_ms = _bench("meta_wall")["subject"]["median"] * 1000
    assert f"about {round(meta_ms, -1):.0f} ms" in costs
    rss = _bench("meta_rss_cold")["subject"]["median"]
    assert rss < 8 * 2**20 and "under 8 MiB" in costs
    tiny = _bench("cpu_tiny_wall")
    untraced = tiny["baseline"]["median"] * 1000
    assert f"{untraced:.0f} ms a forward" in costs
    per_call = (tiny["subject"]["median"] - tiny["baseline"]["median"]) * 1000 / 32
    assert f"about {per_call:.1f} ms per attention call" in costs
    for row in ("meta_forward_sd15_wall", "meta_forward_sdxl_wall", "meta_forward_flux_wall",
                "cpu_sd15_wall", "cpu_tiny_wall", "cpu_tiny_capture_wall", "compile_warm_wall",
                "compile_first_call", "cpu_tiny_bare_wall", "cpu_tiny_handed_wall"):
        assert f"x{_bench(row)['ratio']:.2f}" in costs, row
    for row in ("cpu_tiny_bare_wall", "cpu_tiny_handed_wall", "cpu_tiny_capture_wall"):
        b = _bench(row)
        added = (b["subject"]["median"] - b["baseline"]["median"]) * 1000
        assert f"+{added:.1f} ms" in costs, row
    summary = _bench("meta_wall")["baseline"]["median"] * 1000
    enter_exit = _bench("cpu_sd15_enter_exit")["subject"]["median"] * 1000
    assert f"({round(summary, -1):.0f} ms)" in costs and f"about {enter_exit:.2f} ms" in costs
