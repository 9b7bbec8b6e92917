"""The Python API tried as a torch user would: what torch users pass (devices, dtype names) is
accepted, anything else is a ``ShapeTraceError`` subclass naming the argument, the value and
the fix, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shapetrace.errors import ModelLoadError, OutputError, SettingError, ShapeTraceError
from shapetrace.models import build_model, load_unet_folder
from tests._folders import save_tiny

#: (case, build_model arguments, error, message pattern)
BUILD: list[tuple[str, dict, type[ShapeTraceError], str]] = [
    ("a model that is a number", {"name_or_path": 3}, ModelLoadError,
     r"model 3 names no preset or folder; pass one of sd15, .*, tiny, reference"),
    ("an empty model name", {"name_or_path": ""}, ModelLoadError, r"model '' names no preset"),
    ("a model name of 10,000 characters", {"name_or_path": "m" * 10_000}, ModelLoadError,
     r"unknown model preset 'mmm.*…"),
    ("weights of an unknown kind", {"weights": "pretrained"}, ModelLoadError,
     r"weights='pretrained'"),
    ("a dtype name torch lacks", {"dtype": "float99"}, SettingError,
     r"dtype float99 is not one of"),
    ("an int for a dtype", {"dtype": 3}, SettingError, r"dtype must be a torch.dtype or its name"),
    ("a device torch lacks", {"device": "tpu"}, SettingError, r"device tpu is not a device"),
    ("a device of the wrong type", {"device": 0.5}, SettingError,
     r"device must be a str or torch.device, got 0.5 \(float\)"),
    ("a negative seed", {"device": "cpu", "seed": -1}, SettingError, r"seed -1 must be >= 0"),
    ("a seed too large", {"device": "cpu", "seed": 2**70}, SettingError, r"is more than"),
    ("a seed that is text", {"device": "cpu", "seed": "a"}, SettingError,
     r"seed must be a whole number, got 'a' \(str\)"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "kwargs", "error", "match"), BUILD, ids=[c[0] for c in BUILD])
def test_bad_build_model_arguments_are_named_with_a_fix(case, kwargs, error, match) -> None:
    arguments = {"name_or_path": "tiny", **kwargs}
    with pytest.raises(error, match=match) as raised:
        build_model(**arguments)
    assert len(str(raised.value)) < 400


@pytest.mark.parametrize(
    ("device", "dtype"),
    [(torch.device("cpu"), "float16"), ("CPU", torch.bfloat16), ("cpu", "fp32")],
)
def test_what_torch_users_pass_is_accepted(device, dtype) -> None:
    from shapetrace._checks import check_dtype

    model = build_model("tiny", device=device, dtype=dtype)
    assert model.device == torch.device("cpu")
    assert model.dtype == check_dtype(dtype)


def test_a_local_folder_takes_dtype_names_too(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "unet")
    assert load_unet_folder(folder, device=torch.device("cpu"), dtype="bf16").dtype == (
        torch.bfloat16
    )
    with pytest.raises(SettingError, match=r"dtype int8 is not one of"):
        load_unet_folder(folder, dtype="int8")


def test_maps_written_to_a_file_path_are_refused(tmp_path: Path) -> None:
    from shapetrace.maps.export import write_outputs
    from shapetrace.maps.text import tokenize

    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(OutputError, match=r"out_dir .*notes.txt is a file; give a folder"):
        write_outputs(target, torch.rand(2, 2, 77), tokenize("a cat"), image_size=(16, 16))
    assert target.read_text() == "mine"
