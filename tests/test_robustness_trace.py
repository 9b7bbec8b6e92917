"""``shapetrace trace`` tried as a new user would: every bad flag, path and model folder is
refused before any work, in one line naming the flag, the value and the fix, with exit 2 and
nothing left behind; a failed runtime check exits 1; user text is shown literally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests._cli import assert_empty, assert_refused, copy_folder, run
from tests._folders import BROKEN, save_tiny

TRACE = ["trace", "--model", "tiny", "--height", "64", "--width", "64"]

#: (case, arguments after `trace`, exit status, words the error line must hold)
FLAGS: list[tuple[str, list[str], int, tuple[str, ...]]] = [
    ("height not a multiple of 8", ["--height", "500"], 2,
     ("--height 500 is not divisible by 8", "use 496 or 504")),
    ("height 0", ["--height", "0"], 2, ("--height: must be at least 1, got 0",)),
    ("height negative", ["--height", "-8"], 2, ("--height: must be at least 1, got -8",)),
    ("height a word", ["--height", "abc"], 2, ("--height: expected a whole number, got 'abc'",)),
    ("height in exponent form", ["--height", "1e3"], 2, ("--height", "'1e3'")),
    ("height empty", ["--height", ""], 2, ("--height", "got ''")),
    ("height past the largest side", ["--height", "99999992"], 2,
     ("--height 99,999,992 is larger than 16384 pixels",)),
    ("width 7", ["--width", "7"], 2, ("--width 7 is not divisible by 8", "use 8")),
    ("width of 22 digits", ["--width", "1" + "0" * 21], 2, ("--width", "larger than 16384")),
    ("batch 0", ["--batch", "0"], 2, ("--batch: must be at least 1, got 0",)),
    ("batch a fraction", ["--batch", "2.5"], 2, ("--batch: expected a whole number",)),
    ("batch past what torch indexes", ["--batch", "1" + "0" * 15], 2,
     ("--batch 1,000,000,000,000,000", "beyond what torch indexes", "or less")),
    ("a billion images on cpu", ["--batch", "1000000000", "--device", "cpu"], 2,
     ("--batch 1000000000 on cpu needs about", "is available", "--device meta")),
    ("a device torch does not know", ["--device", "tpu"], 2, ("--device", "got 'tpu'")),
    ("a device shapetrace does not run on", ["--device", "mps"], 2, ("--device", "'mps'")),
    ("device empty", ["--device", ""], 2, ("--device", "got ''")),
    ("a negative cuda index", ["--device", "cuda:-1"], 2, ("--device", "'cuda:-1'")),
    ("dtype float64", ["--dtype", "float64"], 2, ("--dtype: invalid choice: 'float64'",)),
    ("processor xformers", ["--processor", "XFormers"], 2, ("--processor: invalid choice",)),
    ("a processor for a model without", ["--model", "reference", "--processor", "AttnProcessor"],
     2, ("--processor AttnProcessor", "--model reference", "leave --processor out")),
    ("kind both", ["--kind", "both"], 2, ("--kind: invalid choice: 'both'",)),
    ("all and layer", ["--all", "--layer", "x"], 2, ("--layer: not allowed with argument --all",)),
    ("layer empty", ["--layer", ""], 2, ("--layer '' names no layer",)),
    ("layer no layer has", ["--layer", "attn9"], 2,
     ("--layer attn9: no traced attention layer matches 'attn9'", "down.0.0.attn1")),
    ("layer of 10,000 characters", ["--layer", "z" * 10_000], 2,
     ("no traced attention layer matches", "(10,000 characters)")),
    ("layer with markup", ["--layer", "[red]x[/]"], 2, ("matches '[red]x[/]'",)),
    ("layer of the other kind", ["--layer", "down.0.0.attn1", "--kind", "cross"], 2,
     ("--layer down.0.0.attn1 --kind cross", "match no cross-attention layer")),
    ("a flag misspelt", ["--heigth", "256"], 2, ("unrecognized arguments: --heigth 256",)),
    ("json and markdown on one stdout", ["--json", "-", "--markdown", "-"], 2,
     ("--json - and --markdown - both want stdout",)),
    ("json empty", ["--json", ""], 2, ("--json '' names no file",)),
    ("json a folder", ["--json", "."], 2, ("--json . is a folder", "give a file inside it")),
    ("markdown a folder", ["--markdown", "/tmp"], 2, ("--markdown /tmp is a folder",)),
    ("json in a missing folder", ["--json", "nowhere/j.json"], 2,
     ("--json nowhere/j.json: folder nowhere does not exist",)),
    ("json where nothing can be written", ["--json", "/proc/j.json"], 2,
     ("--json /proc/j.json: cannot write in /proc",)),
    ("json name too long", ["--json", "n" * 300 + ".json"], 2,
     ("--json", "more than the 255 bytes a file name may have")),
    ("json and markdown on one file", ["--json", "r", "--markdown", "r"], 2,
     ("--markdown r and --json r are the same path",)),
    ("json and markdown on one file, spelt apart", ["--json", "r", "--markdown", "./r"], 2,
     ("same path",)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "code", "words"), FLAGS, ids=[c[0] for c in FLAGS])
def test_a_bad_trace_flag_is_refused_before_work_in_one_line(
    case, argv, code, words, capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["trace"] if "--model" in argv else TRACE
    assert_refused(run([*base, *argv], capsys), code, *words)
    assert_empty(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_one_line_naming_the_flag(device, capsys) -> None:
    assert_refused(
        run([*TRACE, "--device", device], capsys), 2, f"--device {device}: torch sees no CUDA"
    )


def test_a_file_in_the_way_of_an_output_folder_is_named(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("mine")
    ran = run([*TRACE, "--json", "notes/j.json"], capsys)
    assert_refused(ran, 2, "--json notes/j.json", "notes is a file, not a folder")
    assert_empty(tmp_path, "notes")


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("sd99", (
            "--model sd99: unknown model preset 'sd99'",
            "flux, pixart, reference, sd15, sd21, sd3, sdxl, tiny",
        )),
        ("", ("--model '': model '' names no preset or folder",)),
        ("x" * 10_000, ("--model 'xxx", "(10,000 characters)")),
        ("/" + "y" * 10_000, ("no folder at", "(10,001 characters)")),
        ("/nonexistent/unet", ("--model /nonexistent/unet: no folder at /nonexistent/unet",)),
    ],
    ids=["unknown preset", "empty", "10,000 characters", "a path too long", "missing folder"],
)
def test_a_model_that_names_nothing_is_refused_in_one_line(model, words, capsys) -> None:
    assert_refused(run(["trace", "--model", model], capsys), 2, *words)


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny_unet")


@pytest.mark.parametrize("broken", list(BROKEN), ids=list(BROKEN))
def test_a_broken_model_folder_is_refused_before_building(
    broken, tiny_unet, capsys, tmp_path, monkeypatch
) -> None:
    make, words = BROKEN[broken]
    folder = tmp_path / "models" / "unet"
    folder.parent.mkdir()
    make(tiny_unet, folder)
    monkeypatch.chdir(tmp_path)
    ran = run(["trace", "--model", "models/unet", "--device", "cpu", "--height", "64",
               "--width", "64", "--json", "j.json"], capsys)  # fmt: skip
    assert_refused(ran, 2, "--model models/unet: ", *words)
    assert_empty(tmp_path, "models")


def test_a_file_given_as_model_folder_is_named(tiny_unet, capsys) -> None:
    file = tiny_unet / "config.json"
    assert_refused(run(["trace", "--model", str(file)], capsys), 2, f"{file} is a file")


def test_a_failed_runtime_check_exits_1_and_still_writes_valid_json(
    capsys, tmp_path, monkeypatch
) -> None:
    folder = save_tiny(tmp_path / "nan_unet", fill=float("nan"))
    monkeypatch.chdir(tmp_path)
    argv = ["trace", "--model", str(folder), "--device", "cpu", "--height", "64", "--width", "64"]
    ran = run([*argv, "--json", "j.json"], capsys)
    assert ran.code == 1
    assert "runtime check(s) failed in 32 layer(s) (finite, finite_input" in ran.last
    assert "exit 1 (pass --exit-zero to only report)" in ran.last
    assert not any("Traceback" in line for line in ran.err)
    data = json.loads((tmp_path / "j.json").read_text(encoding="utf-8"))  # valid JSON, no NaN
    assert any(not c["ok"] for layer in data["layers"] for c in layer["checks"])
    only_report = run([*argv, "--exit-zero"], capsys)
    assert only_report.code == 0 and "exit 0 because of --exit-zero" in only_report.last


@pytest.mark.parametrize("name", ["run[v2]", "[bold]red", "a b"])
def test_model_names_with_markup_or_spaces_are_shown_literally(
    name, tiny_unet, capsys, tmp_path, monkeypatch
) -> None:
    folder = copy_folder(tiny_unet, tmp_path / name)
    monkeypatch.setenv("COLUMNS", "200")
    ran = run(["trace", "--model", str(folder), "--height", "64", "--width", "64"], capsys)
    assert ran.code == 0, ran.err
    header = next(line for line in ran.out.splitlines() if "model" in line)
    assert name in header


def test_outputs_are_renamed_into_place_and_leave_no_temporary_file(
    capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "j.json").write_text("an earlier journey")
    ran = run([*TRACE, "--json", "j.json", "--markdown", "r.md"], capsys)
    assert ran.code == 0, ran.err
    assert json.loads((tmp_path / "j.json").read_text())["schema"] == "shapetrace.journey/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json", "r.md"]


def test_an_error_after_the_outputs_were_reserved_leaves_the_old_file_alone(
    capsys, tmp_path, monkeypatch
) -> None:
    import shapetrace

    def failing(*args, **kwargs):
        error = RuntimeError("the forward failed")
        error.add_note("shapetrace: raised inside attention layer 'x' (Attention) after stages")
        raise error

    monkeypatch.setattr(shapetrace, "trace_model", failing)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "j.json").write_text("an earlier journey")
    ran = run([*TRACE, "--json", "j.json"], capsys)
    assert_refused(ran, 1, "the model failed raised inside attention layer 'x'")
    assert (tmp_path / "j.json").read_text() == "an earlier journey"
    assert_empty(tmp_path, "j.json")


def test_version_names_shapetrace_torch_and_diffusers(capsys) -> None:
    ran = run(["--version"], capsys)
    assert ran.code == 0
    assert ran.out.startswith(f"shapetrace {shapetrace_version()} (torch {torch.__version__}")
    assert "diffusers" in ran.out


def shapetrace_version() -> str:
    import shapetrace

    return shapetrace.__version__
