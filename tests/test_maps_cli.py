"""``shapetrace maps``: the command writes heat maps, the maps and a summary; bad input is
one line."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shapetrace.cli import main
from shapetrace.maps.cli import parse_res

TINY = ["--model", "tiny", "--steps", "2", "--height", "64", "--width", "64", "--quiet"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("maps")
    return out, main(["maps", "--prompt", "a cat sitting on a mat", *TINY, "--out", str(out)])


def test_the_command_writes_a_png_per_word_a_grid_the_maps_and_a_summary(written):
    out, status = written
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["heatmaps"] == [
        "01_a.png",
        "02_cat.png",
        "03_sitting.png",
        "04_on.png",
        "05_a.png",
        "06_mat.png",
    ]
    for name in [*summary["files"]["heatmaps"], "grid.png"]:
        assert Image.open(out / name).format == "PNG"
    assert Image.open(out / "02_cat.png").size == (64, 64)
    assert [w["tokens"] for w in summary["words"]] == [[1], [2], [3], [4], [5], [6]]
    assert len(summary["tokens"]) == 77
    assert [t["id"] for t in summary["tokens"][:8]] == [
        49406,
        320,
        2368,
        4919,
        525,
        320,
        9063,
        49407,
    ]
    assert summary["settings"]["steps"] == 2 and summary["settings"]["res"] == [2, 2]
    assert summary["rows"] == ["row 1: cond prompt 0 image 0"]


def test_the_maps_file_holds_all_77_tokens_summing_to_one_per_pixel(written):
    out, _ = written
    maps = load_file(str(out / "maps.safetensors"))["maps"]
    assert maps.shape == (2, 2, 77) and maps.dtype == torch.float32
    torch.testing.assert_close(maps.sum(dim=-1), torch.ones(2, 2))


def test_the_memory_estimate_is_printed_before_the_run_and_matches_the_store(tmp_path, capsys):
    args = ["maps", "--prompt", "a cat", *TINY, "--res", "4", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.index("memory estimate") < printed.index("wrote")
    memory = json.loads((tmp_path / "summary.json").read_text())["memory"]
    assert memory["estimate_bytes"] == memory["stored_bytes"] == 2 * 16 * 77 * 4


def test_non_square_sizes_pick_a_non_square_map(tmp_path):
    size = ["--height", "64", "--width", "128"]
    args = ["maps", "--prompt", "a cat", *TINY, *size, "--out", str(tmp_path)]
    assert main(args) == 0
    assert load_file(str(tmp_path / "maps.safetensors"))["maps"].shape == (2, 4, 77)
    assert Image.open(tmp_path / "02_cat.png").size == (128, 64)


def test_without_guidance_the_maps_come_from_the_single_conditional_row(tmp_path):
    args = ["maps", "--prompt", "a cat", *TINY, "--guidance", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == ["row 0: single prompt 0 image 0"]


def test_a_resolution_no_layer_has_is_one_line_naming_the_sizes(tmp_path, capsys):
    args = ["maps", "--prompt", "a cat", *TINY, "--res", "3", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--res 3x3: no cross-attention layer at that size" in err and "8x8, 4x4, 2x2" in err


def test_a_model_that_is_not_a_unet_is_refused_in_one_line(tmp_path, capsys):
    assert main(["maps", "--prompt", "a cat", "--model", "reference", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--model reference is the reference model" in err and "use --model sd15" in err


def test_res_takes_a_side_or_height_by_width():
    assert parse_res("16") == (16, 16)
    assert parse_res("12x16") == (12, 16)
    with pytest.raises(argparse.ArgumentTypeError, match="--res takes SIDE or HxW"):
        parse_res("big")


@pytest.mark.slow
def test_sd15_at_512_gives_16x16_maps_from_a_real_size_run(tmp_path):
    args = ["maps", "--prompt", "a cat sitting on a mat", "--model", "sd15", "--steps", "1"]
    assert main([*args, "--quiet", "--out", str(tmp_path)]) == 0
    maps = load_file(str(tmp_path / "maps.safetensors"))["maps"]
    assert maps.shape == (16, 16, 77)
    torch.testing.assert_close(maps.sum(dim=-1), torch.ones(16, 16))
