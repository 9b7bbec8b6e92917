"""The bad-input corpus: each case gets a clear ShapeTraceError (or a flag in the journey), never
a raw traceback from inside torch, and leaves the model with no hook and bit-identical output."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import shapetrace
from shapetrace.errors import (
    InputShapeError,
    ModelLoadError,
    NoAttentionLayersError,
    ShapeTraceError,
)
from shapetrace.models import build_model
from shapetrace.reference import CrossAttention
from shapetrace.report import escape
from tests._helpers import hook_count, processors, same_state, state_snapshot


@pytest.fixture(scope="module")
def tiny():
    built = build_model("tiny", device="cpu", seed=0)
    args, kwargs = built.inputs(64, 64, batch=1, seed=3)
    with torch.no_grad():
        reference = built.module(*args, **kwargs).sample
    return built.module, args, kwargs, reference


def _latents(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


# (case id, call(unet, args, kwargs) -> None, expected error, message pattern)
UNET_CORPUS: list[tuple[str, Callable, type[ShapeTraceError], str]] = [
    ("context width 768 into a 64-wide model",
     lambda u, a, k: u(a[0], a[1], encoder_hidden_states=torch.randn(1, 77, 768)),
     InputShapeError, r"encoder_hidden_states \(1, 77, 768\).*width 64"),
    ("latents of rank 3",
     lambda u, a, k: u(a[0][0], a[1], **k), InputShapeError, r"latents \(4, 8, 8\) of rank 3"),
    ("latents with 3 channels",
     lambda u, a, k: u(_latents(1, 3, 8, 8), a[1], **k), InputShapeError, r"with 3 channels"),
    ("an empty batch",
     lambda u, a, k: u(_latents(0, 4, 8, 8), a[1], encoder_hidden_states=torch.randn(0, 77, 64)),
     InputShapeError, r"empty batch"),
    ("context batch 2 for latents batch 1",
     lambda u, a, k: u(a[0], a[1], encoder_hidden_states=torch.randn(2, 77, 64)),
     InputShapeError, r"\(2, 77, 64\) for latents \(1, 4, 8, 8\)"),
    ("no context at all",
     lambda u, a, k: u(a[0], a[1], encoder_hidden_states=None),
     InputShapeError, r"no encoder_hidden_states"),
    ("float64 latents into float32 weights",
     lambda u, a, k: u(a[0].double(), a[1], **k),
     InputShapeError, r"torch.float64 but the weights"),
    ("context on the meta device",
     lambda u, a, k: u(a[0], a[1], encoder_hidden_states=torch.empty(1, 77, 64, device="meta")),
     ShapeTraceError, r"meta|device"),
]


@pytest.mark.parametrize(("case", "call", "error", "message"), UNET_CORPUS,
                         ids=[c[0] for c in UNET_CORPUS])
def test_bad_unet_input_gets_a_clear_error_and_leaves_the_model_as_it_was(
    tiny, case, call, error, message
) -> None:
    unet, args, kwargs, reference = tiny
    before, procs = state_snapshot(unet), processors(unet)
    with pytest.raises(error, match=message):
        with torch.no_grad(), shapetrace.trace(unet):
            call(unet, args, kwargs)
    assert hook_count(unet) == 0 and processors(unet) == procs and same_state(unet, before)
    assert torch._C._len_torch_function_stack() == 0
    with torch.no_grad():
        assert torch.equal(unet(*args, **kwargs).sample, reference)


@pytest.mark.parametrize("where", ["latents", "context"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_are_flagged_in_the_journey(tiny, where: str, value: float) -> None:
    unet, args, kwargs, _ = tiny
    sample, context = args[0].clone(), kwargs["encoder_hidden_states"].clone()
    (sample if where == "latents" else context)[0, 0, 0] = value
    with torch.no_grad(), shapetrace.trace(unet) as journey:
        unet(sample, args[1], encoder_hidden_states=context)
    flagged = {c.name for _, c in journey.violations}
    assert "finite" in flagged
    assert hook_count(unet) == 0


def test_an_error_mid_forward_keeps_its_type_is_named_and_cleaned_up(tiny) -> None:
    unet, args, kwargs, reference = tiny
    target = unet.up_blocks[1].attentions[2].transformer_blocks[0].attn2
    handle = target.to_out[0].register_forward_pre_hook(lambda *_: 1 / 0)
    try:
        with pytest.raises(ZeroDivisionError) as caught:
            with torch.no_grad(), shapetrace.trace(unet):
                unet(*args, **kwargs)
    finally:
        handle.remove()
    assert re.search(r"up_blocks\.1\.attentions\.2.*attn2", caught.value.__notes__[0])
    assert hook_count(unet) == 0
    with torch.no_grad():
        assert torch.equal(unet(*args, **kwargs).sample, reference)


def test_heads_that_do_not_divide_the_width_are_refused() -> None:
    with pytest.raises(InputShapeError, match=r"30.*8"):
        CrossAttention(30, 16, num_heads=8)


class _BadSplit(nn.Module):
    """A user module whose head split cannot work: 30 channels, 8 heads."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 8
        self.to_q, self.to_k, self.to_v = nn.Linear(30, 30), nn.Linear(16, 30), nn.Linear(16, 30)
        self.to_out = nn.Linear(30, 30)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self.to_q(x).view(x.shape[0], -1, self.heads, 30 // self.heads)
        return self.to_out(q.flatten(2))


def test_a_user_module_failing_inside_torch_keeps_its_error_with_the_layer_named() -> None:
    module = _BadSplit()
    with pytest.raises(RuntimeError, match="is invalid for input of size 150") as caught:
        with shapetrace.trace(module):
            module(torch.randn(1, 5, 30), torch.randn(1, 7, 16))
    assert re.search(r"layer '_BadSplit'.*to_q \(1, 5, 30\)", caught.value.__notes__[0])
    assert hook_count(module) == 0


TRACE_MODEL_CORPUS = [
    ({"height": 500}, InputShapeError, r"height 500 is not divisible by 8.*496 or 504"),
    ({"width": 0}, InputShapeError, r"width 0 must be positive"),
    ({"batch": 0}, InputShapeError, r"batch 0 must be >= 1"),
    ({"height": "512"}, InputShapeError, r"height must be a whole number"),
    ({"model": "sd99"}, ModelLoadError, r"sd99"),
    ({"processor": "FlashProcessor"}, InputShapeError, r"unknown processor 'FlashProcessor'"),
    ({"model": "reference", "processor": "AttnProcessor"}, InputShapeError, r"no diffusers"),
    ({"device": "tpu"}, ShapeTraceError, r"tpu"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), TRACE_MODEL_CORPUS)
def test_trace_model_refuses_bad_settings_with_a_fix(kwargs, error, message) -> None:
    settings = {"model": "sd15", "height": 256, "width": 256, **kwargs}
    with pytest.raises(error, match=message):
        shapetrace.trace_model(**settings)


def _tiny_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "unet"
    build_model("tiny", device="cpu").module.save_pretrained(folder, safe_serialization=True)
    return folder


def test_bad_weight_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no folder at .*missing"):
        build_model(tmp_path / "missing", device="cpu")
    folder = _tiny_folder(tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"safetensors"):
        build_model(folder, device="cpu")
    weights.unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle you want to load")
    with pytest.raises(ModelLoadError, match=r"safetensors"):
        build_model(folder, device="cpu")
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config.json"):
        build_model(folder, device="cpu")


def test_models_without_attention_or_forwards_without_it_fail_loudly() -> None:
    with pytest.raises(NoAttentionLayersError, match=r"holds no attention layer"):
        with shapetrace.trace(nn.Linear(3, 3)):
            pass
    attn = CrossAttention(16, 8, num_heads=2)
    with pytest.raises(NoAttentionLayersError, match=r"ran none"):
        with shapetrace.trace(attn):
            attn.to_q(torch.randn(1, 2, 16))
    with pytest.raises(ShapeTraceError, match=r"takes an nn.Module"):
        shapetrace.trace(torch.randn(3))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace", "--height", "500"], "height 500 is not divisible by 8"),
        (["trace", "--model", "/nonexistent/unet"], "/nonexistent/unet"),
        (["trace", "--batch", "0"], "--batch: must be at least 1, got 0"),
    ],
)
def test_the_cli_answers_bad_input_with_an_error_line_and_exit_2(argv, message) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shapetrace", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]  # argparse may print its usage above it
    assert "error:" in last and message in last, done.stderr
    assert "Traceback" not in done.stderr


def test_user_text_is_escaped_in_markdown() -> None:
    text = escape("a | b <script>alert(1)</script> `x`")
    assert "|" not in text.replace("\\|", "") and "<script>" not in text and "`x`" not in text


def test_a_prompt_longer_than_77_tokens_is_refused_unless_truncation_is_asked(
    tmp_path: Path, capsys
) -> None:
    from shapetrace.cli import main

    prompt = " ".join(f"cat{i}" for i in range(60))  # about 120 BPE tokens
    code = main(["maps", "--prompt", prompt, "--model", "tiny", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "does not fit SD 1.5's 77-token window" in err[-1] and "--truncate" in err[-1]
    assert not any(tmp_path.iterdir())


def test_a_prompt_with_markup_and_slashes_stays_inside_the_output_folder(tmp_path: Path) -> None:
    import json

    from shapetrace.cli import main

    prompt = "[bold red]a cat[/] | <b>mat</b>"
    code = main(
        ["maps", "--prompt", prompt, "--model", "tiny", "--steps", "1", "--quiet",
         "--out", str(tmp_path)]
    )
    assert code == 0
    assert json.loads((tmp_path / "summary.json").read_text())["prompt"] == prompt
    written = list(tmp_path.iterdir())
    assert all(p.is_file() and re.fullmatch(r"[\w.-]+", p.name) for p in written), written
    assert any(p.name.endswith("_mat_b.png") for p in written)  # "<b>mat</b>" made safe
