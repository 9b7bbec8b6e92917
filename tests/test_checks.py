"""``shapetrace._checks``: each check returns the value in the form callers need, or raises
one error type naming the argument, the value and the fix; its docstring examples hold."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from shapetrace import _checks
from shapetrace._checks import (
    blame,
    check_batch,
    check_choice,
    check_device,
    check_dtype,
    check_fits,
    check_int,
    check_number,
    check_prompt,
    check_seed,
    check_side,
    check_size,
    check_steps,
    format_bytes,
    shorten,
    show,
)
from shapetrace.errors import InputShapeError, ModelLoadError, SettingError


def test_the_docstring_examples_hold() -> None:
    failed, tried = doctest.testmod(_checks, optionflags=doctest.ELLIPSIS)
    assert tried >= 15 and failed == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("float16", torch.float16), ("FP16", torch.float16), ("half", torch.float16),
     ("torch.bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("float", torch.float32),
     (torch.float32, torch.float32), ("double", torch.float64)],
)  # fmt: skip
def test_dtypes_are_taken_as_torch_dtypes_or_any_usual_name(value, expected) -> None:
    assert check_dtype(value) is expected


@pytest.mark.parametrize(
    ("value", "match"),
    [("float99", r"dtype float99 is not one of float32, float16, bfloat16, float64"),
     (torch.int64, r"dtype torch.int64 is not one of"),
     (3, r"dtype must be a torch.dtype or its name, got 3 \(int\)")],
)  # fmt: skip
def test_other_dtypes_are_refused_with_the_names_there_are(value, match) -> None:
    with pytest.raises(SettingError, match=match):
        check_dtype(value)


def test_a_dtype_outside_the_allowed_ones_is_refused_by_flag() -> None:
    with pytest.raises(SettingError, match=r"--dtype float64 is not one of float32, float16$"):
        check_dtype("float64", "--dtype", allow=("float32", "float16"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("cpu", "cpu"), (" CPU ", "cpu"), (torch.device("cpu"), "cpu"), ("meta", "meta")],
)
def test_devices_are_taken_as_torch_devices_or_names_in_any_case(value, expected) -> None:
    assert check_device(value) == torch.device(expected)


@pytest.mark.parametrize(
    ("value", "allow", "match"),
    [("tpu", ("meta", "cpu", "cuda"), r"device tpu is not a device; use meta, cpu, cuda"),
     ("mps", ("meta", "cpu", "cuda"), r"device mps: shapetrace runs here on meta, cpu, cuda"),
     ("meta", ("cpu", "cuda"), r"device meta: shapetrace runs here on cpu, cuda"),
     ("cpu:1", ("cpu",), r"device cpu:1 has no index; use cpu"),
     (None, ("cpu",), r"device must be a str or torch.device, got None")],
)  # fmt: skip
def test_devices_shapetrace_does_not_run_on_are_refused(value, allow, match) -> None:
    with pytest.raises(SettingError, match=match):
        check_device(value, allow=allow)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_a_gpu_names_the_flag_and_the_torch_build() -> None:
    version = torch.__version__.replace("+", r"\+")
    with pytest.raises(SettingError, match=rf"--device cuda:0: .*\(torch {version}\)"):
        check_device("cuda:0", "--device")


def test_sizes_are_positive_multiples_of_8_up_to_the_largest_side() -> None:
    assert check_size(8, _checks.MAX_SIDE) == (8, _checks.MAX_SIDE)
    for value, match in [
        (500, r"--height 500 is not divisible by 8; SD latents are height/8 — use 496 or 504"),
        (4, r"--height 4 is not divisible by 8; .* use 8$"),
        (0, r"--height 0 must be positive"),
        (-8, r"--height -8 must be positive"),
        (_checks.MAX_SIDE + 8, r"--height 16,392 is larger than 16384 pixels"),
        (512.0, r"--height must be a whole number, got 512.0 \(float\); pass an int"),
        (True, r"--height must be a whole number, got True \(bool\)"),
        ("512", r"--height must be a whole number, got '512' \(str\)"),
    ]:
        with pytest.raises(InputShapeError, match=match):
            check_side(value, "--height")


def test_a_batch_is_at_least_1_and_its_scores_stay_indexable() -> None:
    assert check_batch(2, tokens=4096) == 2
    with pytest.raises(InputShapeError, match=r"batch 0 must be >= 1; use 1, or 2 for"):
        check_batch(0)
    with pytest.raises(InputShapeError, match=r"--batch 10,000,000,000 with 4,096 image tokens"):
        check_batch(10**10, "--batch", tokens=4096)


@pytest.mark.parametrize(
    ("value", "match"),
    [(math.nan, r"guidance nan is not a finite number; SD runs"),
     (math.inf, r"guidance inf is not a finite number"),
     (-1, r"guidance -1 must be >= 0"),
     (1e39, r"guidance 1e\+39 must be <= 1000"),
     ("7", r"guidance must be a number, got '7'"),
     (False, r"guidance must be a number, got False")],
)  # fmt: skip
def test_numbers_must_be_finite_and_in_range(value, match) -> None:
    with pytest.raises(SettingError, match=match):
        check_number(value, "guidance", minimum=0, maximum=1000, fix="SD runs 5 to 15")


def test_steps_run_from_1_to_the_schedulers_timesteps() -> None:
    assert check_steps(1000, train_steps=1000) == 1000
    with pytest.raises(SettingError, match=r"steps 1,001 is more than 1,000; .* 1000 timesteps"):
        check_steps(1001, train_steps=1000)
    with pytest.raises(SettingError, match=r"steps 0 must be >= 1"):
        check_steps(0)


def test_seeds_are_whole_numbers_from_0() -> None:
    assert check_seed(2**63 - 1) == 2**63 - 1
    with pytest.raises(SettingError, match=r"seed -1 must be >= 0; .*same seed gives the same"):
        check_seed(-1)
    with pytest.raises(SettingError, match=r"seed 9,223,372,036,854,775,808 is more than"):
        check_seed(2**63)


def test_a_prompt_needs_a_word() -> None:
    assert check_prompt("a cat") == "a cat"
    with pytest.raises(SettingError, match=r"--prompt '\\n\\t ' has no words"):
        check_prompt("\n\t ", "--prompt")
    with pytest.raises(SettingError, match=r"prompt must be text, got None"):
        check_prompt(None)


def test_choices_and_ints_name_what_is_allowed() -> None:
    assert check_choice("self", "kind", ("cross", "self")) == "self"
    with pytest.raises(SettingError, match=r"kind 'both' is not one of cross, self"):
        check_choice("both", "kind", ("cross", "self"))
    with pytest.raises(SettingError, match=r"n 11 is more than 10; use less"):
        check_int(11, "n", maximum=10, fix="use less")


def test_a_run_bigger_than_the_memory_there_is_is_refused() -> None:
    check_fits(2**30, None, what="x", fix="y")  # no limit known: nothing to refuse
    with pytest.raises(SettingError, match=r"sd15 on cpu needs about 2.0 GiB but 1.0 GiB is av"):
        check_fits(2**31, 2**30, what="sd15 on cpu", fix="use --device meta")


def test_user_text_is_shown_literally_and_cut_in_the_middle() -> None:
    assert show("maps/run1") == "maps/run1"
    assert show("run[v2]") == "'run[v2]'"
    assert show("a b") == "'a b'"
    long = shorten("x" * 10_000, 40)
    assert long.endswith("(10,000 characters)") and "…" in long and len(long) < 70
    assert format_bytes(65_536_000_000_000) == "59.6 TiB"


def test_blame_prefixes_the_flag_and_keeps_the_error_type() -> None:
    with pytest.raises(ModelLoadError, match=r"^--model ./x: no config.json$"):
        with blame("--model ./x", ModelLoadError):
            raise ModelLoadError("no config.json")
    with pytest.raises(ModelLoadError, match=r"^--model y: already named$"):
        with blame("--model ./x", ModelLoadError):
            raise ModelLoadError("--model y: already named")
