"""The finiteness check of a replayed call reads the layer's own output, whether the trace holds
it to the end (small outputs) or sums it at once (past the byte budget): NaN is flagged, a
finite output passes, and an output the model overwrites after the layer returned is not
checked from its new values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shapetrace
from shapetrace.reference import CrossAttention
from shapetrace.tracing import _finite


class _AfterAttention(nn.Module):
    """One cross-attention layer, then what the model does with its output: nothing, or
    writing NaN into it in place."""

    def __init__(self, write_nan: bool) -> None:
        super().__init__()
        self.attn = CrossAttention(32, 16, num_heads=4)
        self.write_nan = write_nan

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = self.attn(x, context)
        if self.write_nan:
            out.mul_(float("nan"))
        return out


def _replayed(model: nn.Module, x: torch.Tensor, context: torch.Tensor) -> shapetrace.Journey:
    """The journey of a call whose signature the model's first traced call recorded."""
    with torch.no_grad():
        with shapetrace.trace(model):
            model(x, context)
        with shapetrace.trace(model) as journey:
            out = model(x, context)
    assert out.shape == x.shape
    return journey


def _finite_checks(journey: shapetrace.Journey) -> list[bool]:
    (layer,) = journey.layers
    return [c.ok for c in layer.checks if c.name == "finite"]


@pytest.fixture(params=["held", "summed_at_once"])
def budget(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "summed_at_once":
        monkeypatch.setattr(_finite, "HOLD_BYTES", 0)
    return str(request.param)


def test_a_finite_output_passes_and_a_nan_output_is_flagged(budget: str) -> None:
    torch.manual_seed(0)
    model = _AfterAttention(write_nan=False)
    x, context = torch.randn(2, 6, 32), torch.randn(2, 7, 16)
    journey = _replayed(model, x, context)
    assert _finite_checks(journey) == [True] and journey.layers[0].checked == 1
    nan = x.clone()
    nan[1, 2, 3] = float("nan")
    with torch.no_grad(), shapetrace.trace(model) as journey:  # the same signature, replayed
        model(nan, context)
    assert _finite_checks(journey) == [False] and journey.layers[0].checked == 1


def test_an_output_written_into_after_the_layer_is_not_checked_from_its_new_values(
    budget: str,
) -> None:
    torch.manual_seed(0)
    x, context = torch.randn(2, 6, 32), torch.randn(2, 7, 16)
    plain = _replayed(_AfterAttention(write_nan=False), x, context)
    written = _replayed(_AfterAttention(write_nan=True), x, context)
    assert _finite_checks(plain) == [True]
    if budget == "held":  # held: the write came first, so the layer's values are gone
        assert _finite_checks(written) == [] and written.layers[0].checked == 0
    else:  # summed in the hook, before the write: the layer's own output, finite
        assert _finite_checks(written) == [True] and written.layers[0].checked == 1


def test_a_failed_block_lets_go_of_the_held_outputs() -> None:
    model = _AfterAttention(write_nan=False)
    x, context = torch.randn(2, 6, 32), torch.randn(2, 7, 16)
    with torch.no_grad(), shapetrace.trace(model):
        model(x, context)
    tracer = shapetrace.trace(model)
    with pytest.raises(RuntimeError, match="after the layer"), torch.no_grad(), tracer:
        model(x, context)
        hooks = tracer._hooks
        assert hooks is not None and len(hooks.finite.held) == 1
        raise RuntimeError("after the layer")
    assert hooks.finite.held == [] and hooks.finite.sums == []


def test_outputs_made_under_inference_mode_are_checked_too() -> None:
    """Inference tensors keep no version counter: their sums are taken at once."""
    torch.manual_seed(0)
    model = _AfterAttention(write_nan=False)
    x, context = torch.randn(2, 6, 32), torch.randn(2, 7, 16)
    nan = x.clone()
    nan[0, 0, 0] = float("nan")
    with torch.inference_mode():
        with shapetrace.trace(model):
            model(x, context)
        with shapetrace.trace(model) as passed:
            model(x, context)
        with shapetrace.trace(model) as flagged:
            model(nan, context)
    assert _finite_checks(passed) == [True] and _finite_checks(flagged) == [False]
