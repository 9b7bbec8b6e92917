"""The reports of what SD 1.5 does not have: joint attention (SD3, Flux single-stream), an
IP-Adapter branch, a layer shapetrace could not read, calls left out of the journey."""

from __future__ import annotations

import io
import re

import torch
from rich.console import Console

import shapetrace
from shapetrace.report import print_report, to_markdown
from shapetrace.run import trace_model
from tests.test_trace_generality import Opaque, _ip_adapter_unet


def _console(journey, layers=None) -> str:
    out = io.StringIO()
    print_report(journey, layers, console=Console(width=200, file=out, color_system=None))
    return out.getvalue()


def test_sd3_report_shows_joint_layers_their_order_and_cross_block() -> None:
    journey = trace_model("sd3", height=256, width=256)  # 16x16 patches: 256 image tokens
    text = _console(journey)
    assert "24 attention layers: 24 joint" in text
    assert "joint-attention · place transformer · grid 16×16 · 24 heads of 64" in text
    assert re.search(r"scores\s+\(1, 24, 589, 589\)\s+\(B, H, N\+M, N\+M\)", text)  # 256 + 333
    assert re.search(r"cross_probs\s+\(1, 24, 256, 333\)\s+\(B, H, N, M\)", text)
    assert "joined (image then text)" in text
    md = to_markdown(journey)
    assert (
        "| cross\\_probs | *`(1, 24, 256, 333)`* | `(B, H, N, M)` | probs\\[:, :, 0:256, 256:589\\]"
        in md
    )


def test_flux_single_stream_input_is_reported_as_the_joined_sequence() -> None:
    journey = trace_model("flux", height=256, width=256)
    single = journey.layer("single_transformer_blocks.0.attn")
    text = _console(journey, [single])
    assert re.search(r"input\s+\(1, 768, 3072\)\s+\(B, N\+M, C\)", text)  # 256 + 512 tokens
    assert "joined sequence: 256 image + 512 text tokens (text then image" in text


def test_an_ip_adapter_branch_is_shown_under_its_layer() -> None:
    unet, args, kwargs = _ip_adapter_unet(tokens=4)
    with torch.no_grad(), shapetrace.trace(unet) as journey:
        unet(*args, **kwargs)
    text = _console(journey, journey.cross[:1])
    assert "branch ip: cross-attention of the same queries to 4 ip tokens" in text
    assert "(2, 8, 64, 4)" in text  # its scores: 64 image queries x 4 image-prompt tokens
    assert "### branch ip: cross-attention" in to_markdown(journey, journey.cross[:1])


def test_a_layer_it_cannot_read_is_listed_with_the_reason_in_both_reports() -> None:
    model = Opaque()
    with torch.no_grad(), shapetrace.trace(model) as journey:
        model(torch.randn(1, 5, 8))
    text = _console(journey)
    assert "Not understood" in text and "Opaque" in text
    assert "no score computation was seen inside the call" in text
    md = to_markdown(journey)
    assert "## Not understood" in md and "| Opaque | Opaque | no score computation" in md


def test_calls_left_out_are_counted_in_the_header() -> None:
    journey = trace_model("tiny", height=64, width=64)
    journey.skipped = {"other_threads": 96, "recomputes": 32}
    text = _console(journey)
    assert "96 calls from other threads" in text and "32 checkpoint recomputes" in text
