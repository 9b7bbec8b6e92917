"""``shapetrace maps`` tried as a new user would: every bad flag, prompt, folder and model is
refused before a weight is loaded, in one line naming the flag, the value and the fix, with
exit 2 and nothing written; a run replaces an earlier run's folder as a whole or refuses;
non-finite maps exit 1 and Ctrl-C exits 130, both leaving everything as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._cli import assert_empty, assert_refused, copy_folder, run
from tests._folders import BROKEN, save_tiny, save_tiny_text_encoder

BASE = ["maps", "--model", "tiny", "--steps", "1", "--height", "64", "--width", "64", "--quiet"]


def maps(*argv: str, prompt: str = "a cat", out: str = "o") -> list[str]:
    return [*BASE, "--prompt", prompt, "--out", out, *argv]


#: (case, argv, words the error line must hold); all exit 2 and write nothing.
REFUSED: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("steps 0", maps("--steps", "0"), ("--steps 0 must be >= 1",)),
    ("steps -1", maps("--steps", "-1"), ("--steps -1 must be >= 1",)),
    ("steps 10,000", maps("--steps", "10000"),
     ("--steps 10,000 is more than 1,000", "the scheduler has 1000 timesteps")),
    ("steps 1001", maps("--steps", "1001"), ("--steps 1,001 is more than 1,000",)),
    ("steps 1000, past PNDM's last timestep", maps("--steps", "1000"),
     ("--steps 1000: PNDMScheduler cannot make 1000 distinct steps", "use --steps 999 or fewer")),
    ("steps a word", maps("--steps", "abc"), ("--steps: invalid int value: 'abc'",)),
    ("steps a fraction", maps("--steps", "2.5"), ("--steps: invalid int value: '2.5'",)),
    ("height 0", maps("--height", "0"), ("--height 0 must be positive",)),
    ("height 7", maps("--height", "7"), ("--height 7 is not divisible by 8", "use 8")),
    ("height 500", maps("--height", "500"), ("--height 500", "use 496 or 504")),
    ("height -64", maps("--height", "-64"), ("--height -64 must be positive",)),
    ("height a word", maps("--height", "abc"), ("--height: invalid int value: 'abc'",)),
    ("height 100,000", maps("--height", "100000"), ("--height 100,000 is larger than 16384",)),
    ("width 0", maps("--width", "0"), ("--width 0 must be positive",)),
    ("width 12", maps("--width", "12"), ("--width 12 is not divisible by 8", "use 8 or 16")),
    ("guidance nan", maps("--guidance", "nan"), ("--guidance nan is not a finite number",)),
    ("guidance inf", maps("--guidance", "inf"), ("--guidance inf is not a finite number",)),
    ("guidance -inf", maps("--guidance=-inf"), ("--guidance -inf is not a finite number",)),
    ("guidance -1", maps("--guidance", "-1"), ("--guidance -1 must be >= 0",)),
    ("guidance 1e39", maps("--guidance", "1e39"), ("--guidance 1e+39 must be <= 1000",)),
    ("guidance a word", maps("--guidance", "abc"), ("--guidance: invalid float value: 'abc'",)),
    ("prompt empty", maps(prompt=""), ("--prompt '' has no words",)),
    ("prompt of spaces", maps(prompt="   \t"), ("has no words", "--prompt 'a cat sitting")),
    ("prompt of 10,000 characters", maps(prompt="q" * 10_000),
     ("does not fit SD 1.5's 77-token window", "--truncate", "(10,000 characters)")),
    ("prompt of 60 words", maps(prompt=" ".join(f"cat{i}" for i in range(60))),
     ("--prompt has 60 words", "from word 30 ('cat29') on it would be cut", "--truncate")),
    ("seed -1", maps("--seed", "-1"), ("--seed -1 must be >= 0", "same seed gives the same")),
    ("seed 2**70", maps("--seed", str(2**70)), ("--seed 1,180,591,620,717,411,303,424 is more",)),
    ("seed a word", maps("--seed", "abc"), ("--seed: invalid int value: 'abc'",)),
    ("res 0", maps("--res", "0"), ("--res takes SIDE or HxW", "got '0'")),
    ("res a word", maps("--res", "abc"), ("--res takes SIDE or HxW",)),
    ("res no layer has", maps("--res", "3"),
     ("--res 3x3: no cross-attention layer at that size", "8x8, 4x4, 2x2")),
    ("res 16x", maps("--res", "16x"), ("--res takes SIDE or HxW", "'16x'")),
    ("res x16", maps("--res", "x16"), ("--res takes SIDE or HxW",)),
    ("res 0x16", maps("--res", "0x16"), ("--res takes SIDE or HxW",)),
    ("res 2x2x2", maps("--res", "2x2x2"), ("--res takes SIDE or HxW",)),
    ("device tpu", maps("--device", "tpu"), ("--device tpu is not a device; use cpu, cuda",)),
    ("device meta", maps("--device", "meta"), ("--device meta: shapetrace runs here on cpu",)),
    ("device empty", maps("--device", ""), ("--device '' is not a device",)),
    ("out empty", maps(out=""), ("--out '' names no folder",)),
    ("out the current folder", maps(out="."), ("--out . is the current folder or holds it",)),
    ("out a folder holding this one", maps(out=".."), ("--out .. is the current folder or",)),
    ("out where nothing can be written", maps(out="/proc/maps_out"),
     ("--out /proc/maps_out: cannot write in /proc",)),
    ("out name too long", maps(out="n" * 300), ("--out", "more than the 255 bytes")),
    ("model reference", ["maps", "--prompt", "a cat", "--model", "reference", "--out", "o"],
     ("--model reference is the reference model", "use --model sd15, tiny")),
    ("model unknown", ["maps", "--prompt", "a cat", "--model", "sd99", "--out", "o"],
     ("--model sd99: unknown model preset 'sd99'",)),
    ("text encoder missing", maps("--text-encoder", "/nope"),
     ("--text-encoder /nope: no config.json in /nope",)),
    ("out missing", ["maps", "--prompt", "a cat"], ("required: --out",)),
    ("prompt missing", ["maps", "--out", "o"], ("required: --prompt",)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "words"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_bad_maps_flag_is_refused_before_work_in_one_line(
    case, argv, words, capsys, tmp_path, monkeypatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert_refused(run(argv, capsys), 2, *words)
    assert_empty(work)
    assert_empty(tmp_path, "work")


def test_cuda_without_a_gpu_is_refused_for_maps(capsys, tmp_path, monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    assert_refused(run(maps("--device", "cuda"), capsys), 2, "--device cuda: torch sees no CUDA")
    assert_empty(tmp_path)


def test_out_that_is_a_file_is_refused(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert_refused(run(maps(out="notes.txt"), capsys), 2, "--out notes.txt is a file")
    assert_refused(run(maps(out="notes.txt/sub"), capsys), 2, "notes.txt is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert_empty(tmp_path, "notes.txt")


def test_a_folder_with_other_files_is_refused_and_left_alone(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    ran = run(maps(), capsys)
    assert_refused(ran, 2, "--out o holds files that are not an earlier run's ('notes.txt')")
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["notes.txt"]
    assert_empty(tmp_path, "o")


def test_a_run_that_needs_more_memory_than_there_is_is_refused(
    capsys, tmp_path, monkeypatch
) -> None:
    import shapetrace.maps._preflight as preflight

    monkeypatch.setattr(preflight, "available_memory", lambda device: 2**20)
    monkeypatch.chdir(tmp_path)
    ran = run(maps(), capsys)
    assert_refused(ran, 2, "maps with --model tiny at 64x64 on cpu needs about",
                   "but 1.0 MiB is available", "use a smaller --height and --width")  # fmt: skip
    assert_empty(tmp_path)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_rerun_replaces_the_earlier_run_as_a_whole(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(maps(prompt="a cat sitting on a mat"), capsys).code == 0
    assert "03_sitting.png" in _files(tmp_path / "o")
    again = run(maps(prompt="a dog"), capsys)
    assert again.code == 0, again.err
    assert _files(tmp_path / "o") == [
        "01_a.png", "02_dog.png", "grid.png", "maps.safetensors", "summary.json"
    ]  # fmt: skip
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["prompt"] == "a dog"
    assert_empty(tmp_path, "o")


@pytest.mark.parametrize(
    ("prompt", "out", "word_file"),
    [
        ("a " + "w" * 270, "o", "02_" + "w" * 40 + ".png"),
        ("[bold]a[/] cat a[/]b", "o", "02_cat.png"),
        ("a\ncat", "o", "02_cat.png"),
        ("a 🐱 on a mat", "o", "05_mat.png"),
        ("!!!", "o", "01_token.png"),
        ("a cat", "run[v2]", "02_cat.png"),
        ("a cat", "a/b/c", "02_cat.png"),
    ],
    ids=[
        "a 270-character word", "markup", "a newline", "an emoji", "punctuation only",
        "markup in --out", "a nested new --out",
    ],
)
def test_odd_prompts_and_folders_are_written_literally_and_whole(
    prompt, out, word_file, capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ran = run(maps(prompt=prompt, out=out), capsys)
    assert ran.code == 0, ran.err
    folder = tmp_path / out
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["prompt"] == prompt
    assert word_file in _files(folder)
    assert all(len(name) <= 60 for name in _files(folder))
    assert f"to {out} (stored" in " ".join(ran.out.split())
    assert_empty(tmp_path, out.split("/")[0])


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny": save_tiny(root / "tiny_unet"),
        "nan": save_tiny(root / "nan_unet", fill=float("nan")),
        "text": save_tiny_text_encoder(root / "tiny_text"),
    }


@pytest.mark.parametrize(
    "broken", ["config {}", "a CLIP text encoder's config", "block_out_channels 'abc'",
               "a VAE's config", "weights cut off", "SD 1.5's config beside tiny weights"],
)  # fmt: skip
def test_a_broken_model_folder_is_refused_before_a_weight_is_loaded(
    broken, folders, capsys, tmp_path, monkeypatch
) -> None:
    make, words = BROKEN[broken]
    make(folders["tiny"], tmp_path / "unet")
    monkeypatch.chdir(tmp_path)
    ran = run(["maps", "--prompt", "a cat", "--model", "unet", "--out", "o"], capsys)
    assert_refused(ran, 2, "--model unet", *words)
    assert_empty(tmp_path, "unet")


@pytest.mark.parametrize(
    ("text_encoder", "words"),
    [
        ("tiny", ("--text-encoder", "describes a UNet2DConditionModel", "not a CLIPTextModel")),
        ("sd15 config", ("hidden_size 768 does not match the UNet's cross_attention_dim 64",)),
        ("no weights", ("holds no *.safetensors weights",)),
    ],
    ids=["a UNet folder", "another width", "no weights"],
)
def test_a_text_encoder_that_cannot_serve_is_refused_before_loading(
    text_encoder, words, folders, capsys, tmp_path, monkeypatch
) -> None:
    from shapetrace.models import read_config

    if text_encoder == "tiny":
        folder = folders["tiny"]
    else:
        folder = copy_folder(folders["text"], tmp_path / "text")
        if text_encoder == "sd15 config":
            (folder / "config.json").write_text(json.dumps(read_config("sd15_text_encoder.json")))
        else:
            (folder / "model.safetensors").unlink()
    monkeypatch.chdir(tmp_path)
    ran = run(maps("--text-encoder", str(folder)), capsys)
    assert_refused(ran, 2, *words)
    assert_empty(tmp_path, "text")


def test_non_finite_maps_exit_1_and_keep_the_earlier_run(
    folders, capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(maps(prompt="a dog"), capsys).code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}
    argv = [*maps(prompt="a cat"), "--model", str(folders["nan"])]
    ran = run([*argv, "--text-encoder", str(folders["text"])], capsys)
    assert_refused(ran, 1, "the maps are not finite", "nothing was written")
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == before
    assert_empty(tmp_path, "o")


def test_ctrl_c_during_the_run_exits_130_and_keeps_the_earlier_run(
    capsys, tmp_path, monkeypatch
) -> None:
    import shapetrace.maps.pipeline as pipeline

    monkeypatch.chdir(tmp_path)
    assert run(maps(prompt="a dog"), capsys).code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "denoise", interrupted)
    ran = run(maps(prompt="a cat"), capsys)
    assert ran.code == 130
    assert ran.err == ["shapetrace: interrupted; nothing was written"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == before
    assert_empty(tmp_path, "o")


def test_a_full_disk_while_writing_maps_is_one_line_and_keeps_the_earlier_run(
    capsys, tmp_path, monkeypatch
) -> None:
    import errno

    import shapetrace.maps.export as export

    monkeypatch.chdir(tmp_path)
    assert run(maps(prompt="a dog"), capsys).code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "save_png", full)
    ran = run(maps(prompt="a cat"), capsys)
    assert_refused(ran, 2, "--out o: writing failed (No space left on device)")
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == before
    assert_empty(tmp_path, "o")
