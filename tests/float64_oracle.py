"""Direct float64 comparisons with diffusers' own processors, independent of shapetrace.

A planted bug counts in the kill rate only after it is shown wrong here, at its witness, and a
correct variant only after it is shown right: the same inputs and weights through the code
and through diffusers' ``Attention`` with its reference ``AttnProcessor`` (or
``AttnAddedKVProcessor``), all in float64, outputs and, where asked, the gradients of
``sum(output * g)`` to the inputs and every weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from cases import ModuleWitness, ProcessorWitness
from diffusers.models.attention_processor import Attention, AttnAddedKVProcessor, AttnProcessor
from torch import Tensor, nn

__all__ = ["Comparison", "compare_module", "compare_processor"]

Comparison = tuple[float, str]
"""(largest |difference| over the output and every gradient compared, where it was)."""


def _linear(module: nn.Module, name: str) -> nn.Linear:
    layer = getattr(module, name)
    return layer[0] if isinstance(layer, (nn.ModuleList, nn.Sequential)) else layer


def _largest(pairs: dict[str, tuple[Tensor | None, Tensor | None]]) -> Comparison:
    """The worst difference over named pairs; a missing gradient or a NaN counts as inf."""
    worst, where = 0.0, ""
    for name, (got, expected) in pairs.items():
        if expected is None and got is None:
            continue
        if got is None or expected is None or got.shape != expected.shape:
            return math.inf, f"{name}: one side has none, or another shape"
        diff = (got.double() - expected.double()).abs().max().item()
        if not math.isfinite(diff):
            return math.inf, f"{name}: NaN or inf"
        if diff > worst:
            worst, where = diff, name
    return worst, where


def _run(
    layers: tuple[nn.Module, nn.Module],
    call: Callable[[nn.Module, dict[str, Tensor]], Tensor],
    inputs: dict[str, Tensor],
    gradients: bool,
) -> Comparison:
    """Both layers on the same inputs; their outputs (and gradients) compared."""
    results = []
    for i, layer in enumerate(layers):
        leaves = {k: v.clone().requires_grad_(gradients) for k, v in inputs.items()}
        params = dict(layer.named_parameters())
        try:
            with torch.set_grad_enabled(gradients):
                out = call(layer, leaves)
        except Exception as err:  # a crash is wrong too; the oracle's own is re-raised
            if i == 1:
                raise  # the oracle itself must run
            return math.inf, f"raised {type(err).__name__}: {err}"
        grads: dict[str, Tensor | None] = {}
        if gradients:
            cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(5),
                                    dtype=torch.float64)  # fmt: skip
            targets = {**leaves, **params}
            found = torch.autograd.grad((out * cotangent).sum(), list(targets.values()),
                                        allow_unused=True)  # fmt: skip
            grads = dict(zip(targets, found))
        results.append((out.detach(), grads))
    (out_a, grads_a), (out_b, grads_b) = results
    pairs: dict[str, tuple[Tensor | None, Tensor | None]] = {"output": (out_a, out_b)}
    same = {n.replace("to_out.0.", "to_out."): g for n, g in grads_a.items()}
    pairs.update({f"grad {n}": (same.get(n.replace("to_out.0.", "to_out.")), g)
                  for n, g in grads_b.items()})  # fmt: skip
    return _largest(pairs)


def _scale_logits(layer: nn.Module, factor: float, names: tuple[str, ...]) -> None:
    with torch.no_grad():
        for name in names:
            if getattr(layer, name, None) is None:
                continue
            lin = _linear(layer, name)
            lin.weight.mul_(factor)
            if lin.bias is not None:
                lin.bias.mul_(factor)


def compare_module(factory: Callable[[int, int, int], nn.Module], w: ModuleWitness) -> Comparison:
    """``factory``'s module against diffusers' ``Attention`` + ``AttnProcessor`` holding the
    same weights, in float64, at the witness."""
    s = w.shapes
    torch.manual_seed(s.seed)
    module = factory(s.query_dim, s.context_dim, s.heads).double().eval()
    oracle = Attention(
        s.query_dim,
        cross_attention_dim=s.context_dim,
        heads=s.heads,
        dim_head=s.query_dim // s.heads,
        bias=True,
        processor=AttnProcessor(),
    )
    oracle = oracle.double().eval()  # fmt: skip
    with torch.no_grad():
        for name in ("to_q", "to_k", "to_v", "to_out"):
            _linear(oracle, name).weight.copy_(_linear(module, name).weight)
            _linear(oracle, name).bias.copy_(_linear(module, name).bias)
    for layer in (module, oracle):
        _scale_logits(layer, w.logit_factor, ("to_q", "to_k"))
    g = torch.Generator().manual_seed(s.seed)
    x = torch.randn(s.batch, s.query_tokens, s.query_dim, generator=g, dtype=torch.float64)
    context = torch.randn(s.batch, s.context_tokens, s.context_dim, generator=g,
                          dtype=torch.float64)  # fmt: skip

    def call(layer: nn.Module, t: dict[str, Tensor]) -> Tensor:
        if isinstance(layer, Attention):
            out: Tensor = layer(t["x"], encoder_hidden_states=t["context"])
        else:
            out = layer(t["x"], t["context"])
        return out

    return _run((module, oracle), call, {"x": x, "context": context}, w.gradients)


def _randomize_norms(layer: nn.Module, seed: int) -> None:
    """Norm affine parameters away from 1 and 0, so skipping a norm shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in layer.modules():
            if isinstance(sub, (nn.GroupNorm, nn.LayerNorm)) and sub.weight is not None:
                sub.weight.copy_(1 + 0.3 * torch.randn(sub.weight.shape, generator=g))
                sub.bias.copy_(0.3 * torch.randn(sub.bias.shape, generator=g))


def compare_processor(processor: Any, w: ProcessorWitness, *, dim_head: int = 4) -> Comparison:
    """``processor`` on ``Attention(query_dim, heads=2, dim_head, **w.kwargs)`` against the
    same layer on diffusers' reference processor, in float64, at the witness."""
    reference = AttnAddedKVProcessor() if w.added_kv else AttnProcessor()
    torch.manual_seed(0)
    layer = Attention(w.query_dim, heads=2, dim_head=dim_head, processor=processor, **w.kwargs)
    layer = layer.double().eval()
    _randomize_norms(layer, 1)
    exact = {k: v for k, v in w.kwargs.items() if k not in w.oracle_without}
    oracle = Attention(w.query_dim, heads=2, dim_head=dim_head, processor=reference, **exact)
    oracle = oracle.double().eval()
    oracle.load_state_dict(layer.state_dict())
    for each in (layer, oracle):
        _scale_logits(each, w.logit_factor, ("to_q", "to_k", "add_k_proj"))
    g = torch.Generator().manual_seed(2)
    b = 2
    shape = (b, w.query_dim, *w.grid) if w.grid else (b, w.tokens, w.query_dim)
    inputs = {"hidden": torch.randn(shape, generator=g, dtype=torch.float64)}
    n = math.prod(w.grid) if w.grid else w.tokens
    if w.context is not None:
        width = w.kwargs.get("added_kv_proj_dim") or w.kwargs.get("cross_attention_dim")
        inputs["context"] = torch.randn(b, w.context, width, generator=g, dtype=torch.float64)
    kwargs: dict[str, Tensor] = {}
    if w.mask:
        keys = n if w.context is None else w.context
        mask = torch.zeros(b, 1, keys, dtype=torch.float64)
        mask[0, 0, 0] = mask[1, 0, 1:3] = -10000.0  # rows masked differently
        kwargs["attention_mask"] = mask
    if w.temb:
        kwargs["temb"] = torch.randn(b, 4, 2, 2, generator=g, dtype=torch.float64)

    def call(layer: nn.Module, t: dict[str, Tensor]) -> Tensor:
        out: Tensor = layer(t["hidden"], encoder_hidden_states=t.get("context"), **kwargs)
        return out

    return _run((layer, oracle), call, inputs, w.gradients)
