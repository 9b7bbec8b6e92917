"""What probes get: in joint attention the image-query x text-key block of the softmax over
every key, in the model's own token order; whole q and k under sliced attention; gradients
when asked. References are computed here from what the attention op really received,
captured by wrapping ``scaled_dot_product_attention`` (not through the tracer)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import shapetrace
from shapetrace.tracing import AttentionCall
from tests import tiny_models


class Collect:
    """A probe that keeps each call's cross block in float64."""

    def __init__(self, grad: bool = False) -> None:
        self.calls: list[AttentionCall] = []
        self.blocks: list[torch.Tensor] = []
        self.grad = grad

    def on_attention(self, call: AttentionCall) -> None:
        self.calls.append(call)
        self.blocks.append(call.compute_probs(torch.float64, grad=self.grad))


@pytest.fixture
def sdpa_inputs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = F.scaled_dot_product_attention

    def recording(query, key, *args, **kwargs):
        seen.append((query.detach().clone(), key.detach().clone()))
        return original(query, key, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return seen


def _reference(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    q64, k64 = q.double(), k.double()
    return torch.softmax(q64 @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


def test_sd3_probes_get_the_image_rows_and_text_columns_of_the_joint_softmax(sdpa_inputs) -> None:
    model, args, kwargs, _config = tiny_models.sd3(batch=2, height=128, width=128, text=7)
    probe = Collect()
    with torch.no_grad(), shapetrace.trace(model, probes=[probe]):
        model(*args, **kwargs)
    assert len(probe.blocks) == len(sdpa_inputs) == 2
    n = 64  # (128/8/2)^2 image tokens, then 7 text tokens
    for block, (q, k), call in zip(probe.blocks, sdpa_inputs, probe.calls):
        assert call.query_heads.shape == (2, 2, n + 7, 8) and call.layer.kind == "joint"
        want = _reference(q, k)[:, :, :n, n:]
        assert block.shape == (2, 2, n, 7)
        torch.testing.assert_close(block, want, rtol=0, atol=1e-12)
        assert bool((block.sum(-1) < 1).all())  # a share of the joint softmax, not renormalized


def test_flux_probes_take_the_text_first_order_into_account(sdpa_inputs) -> None:
    model, args, kwargs, _config = tiny_models.flux(batch=1, rows=4, cols=6, text=5)
    probe = Collect()
    with torch.no_grad(), shapetrace.trace(model, probes=[probe]):
        model(*args, **kwargs)
    assert len(probe.blocks) == len(sdpa_inputs) == 4  # 2 double-stream + 2 single-stream
    for block, (q, k) in zip(probe.blocks, sdpa_inputs):
        torch.testing.assert_close(block, _reference(q, k)[:, :, 5:, :5], rtol=0, atol=1e-12)


def test_sliced_attention_gives_probes_the_whole_heads(sdpa_inputs) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    from shapetrace.models import build_model

    built = build_model("tiny", device="cpu", seed=0)
    args, kwargs = built.inputs(64, 64, 2)
    built.module.set_attn_processor(AttnProcessor())
    whole = Collect()
    with torch.no_grad(), shapetrace.trace(built.module, probes=[whole]):
        built.module(*args, **kwargs)
    built.module.set_attention_slice(3)  # 16 rows of (B*H) in slices of 3: the last is 1 row
    sliced = Collect()
    with torch.no_grad(), shapetrace.trace(built.module, probes=[sliced]) as journey:
        built.module(*args, **kwargs)
    assert not journey.violations and len(sliced.blocks) == len(whole.blocks) == 32
    assert all(c.probs is not None for c in whole.calls)  # AttnProcessor materializes them
    assert all(c.probs is None and c.query_heads.shape[:2] == (2, 8) for c in sliced.calls)
    for a, b in zip(whole.blocks, sliced.blocks):  # float32 probs vs float64 from whole q, k
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_joint_blocks_keep_their_graph_to_the_inputs_when_asked() -> None:
    model, _args, kwargs, _config = tiny_models.sd3(batch=1, height=64, width=64, text=3)
    latents = kwargs["hidden_states"].clone().requires_grad_(True)
    probe = Collect(grad=True)
    with shapetrace.trace(model, probes=[probe], monitors=False):
        model(**{**kwargs, "hidden_states": latents})
    loss = sum(block[..., 0].max() for block in probe.blocks)
    (grad,) = torch.autograd.grad(loss, latents)
    assert grad.abs().sum() > 0
    plain = Collect()
    with shapetrace.trace(model, probes=[plain], monitors=False):
        model(**{**kwargs, "hidden_states": latents})
    assert all(not block.requires_grad for block in plain.blocks)


class PreScaled(torch.nn.Module):
    """Scales q by 1/sqrt(d) itself, then calls SDPA with scale=1."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_out = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.to_k, self.to_v = torch.nn.Linear(6, 8), torch.nn.Linear(6, 8)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, 2, 4).transpose(1, 2) * (4**-0.5)
        k = self.to_k(context).view(b, -1, 2, 4).transpose(1, 2)
        v = self.to_v(context).view(b, -1, 2, 4).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, 8))


def test_a_query_scaled_before_the_score_op_is_not_scaled_twice_for_probes() -> None:
    model, probe = PreScaled(), Collect()
    x, context = torch.randn(1, 5, 8), torch.randn(1, 3, 6)
    with torch.no_grad(), shapetrace.trace(model, probes=[probe]) as journey:
        model(x, context)
    q = model.to_q(x).view(1, 5, 2, 4).transpose(1, 2).double()
    k = model.to_k(context).view(1, 3, 2, 4).transpose(1, 2).double()
    want = torch.softmax(q @ k.transpose(-1, -2) / 2, dim=-1)
    assert journey.layers[0].scale == pytest.approx(0.5) and journey.layers[0].ok
    torch.testing.assert_close(probe.blocks[0], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rows", [None, slice(1, 2), torch.tensor([1])])
def test_compute_probs_is_float32_softmax_even_under_autocast(rows) -> None:
    from shapetrace.journey import LayerRecord

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 64, 8, generator=g), torch.randn(2, 3, 9, 8, generator=g)
    call = AttentionCall(LayerRecord("l", "cross", "down", (8, 8), "p", 3, 8), q, k, 0.3)
    picked = slice(None) if rows is None else rows
    reference = (q.double()[picked] @ k.double()[picked].transpose(-1, -2) * 0.3).softmax(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (q @ k.transpose(-1, -2)).dtype == torch.bfloat16  # autocast is on here
        probs = call.compute_probs(torch.float32, rows=rows)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.double(), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "rows", [slice(0, 1), slice(1, 2), slice(0, 2), slice(2, 3), torch.tensor([1, 0])]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compute_probs_reads_the_strided_heads_a_plan_gives(rows, dtype) -> None:
    """q and k as the light replay hands them over: (B, N, H*d) projection outputs viewed as
    (B, H, N, d), not contiguous; one kept row takes its own path (one index per tensor)."""
    from shapetrace.journey import LayerRecord

    g = torch.Generator().manual_seed(1)
    q_out, k_out = torch.randn(2, 64, 3 * 8, generator=g), torch.randn(2, 9, 3 * 8, generator=g)
    q = q_out.view(2, 64, 3, 8).transpose(1, 2)
    k = k_out.view(2, 9, 3, 8).transpose(1, 2)
    assert not q.is_contiguous()
    call = AttentionCall(LayerRecord("l", "cross", "down", (8, 8), "p", 3, 8), q, k, 0.35)
    picked = rows if isinstance(rows, slice) else rows.tolist()
    reference = (q.double()[picked] @ k.double()[picked].transpose(-1, -2) * 0.35).softmax(-1)
    probs = call.compute_probs(dtype, rows=rows)
    assert probs.dtype == dtype and probs.shape == reference.shape
    torch.testing.assert_close(probs.double(), reference, rtol=0,
                               atol=1e-12 if dtype == torch.float64 else 1e-6)
