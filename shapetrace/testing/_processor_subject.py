"""A diffusers ``Attention`` layer running the processor under test, as a check subject."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from shapetrace.testing._subject import AttentionSubject, seed_projections
from shapetrace.testing._weights import projection
from shapetrace.testing.implementations import ReferenceOutput, build_diffusers_attention
from shapetrace.testing.strategies import AttentionShapes

__all__ = ["MASKED_SCORE", "ProcessorSubject"]

MASKED_SCORE = -10000.0
"""What a masked key adds to its scores in diffusers' convention (the UNet turns a boolean
``encoder_attention_mask`` into ``(1 - mask) * -10000.0``)."""


class ProcessorSubject(AttentionSubject):
    """A diffusers ``Attention`` running the processor under test, masks in diffusers'
    additive convention; the oracle is the same layer on diffusers' ``AttnProcessor``."""

    supports_mask = True
    oracle = "diffusers' AttnProcessor on the same layer and weights, in float64"

    def _additive(self, mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        if mask is None:
            return None
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return bias.masked_fill(~mask, MASKED_SCORE)[:, None, :]  # (B, 1, M)

    def call(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        out: Tensor = self.module(
            x, encoder_hidden_states=context, attention_mask=self._additive(mask, x.dtype)
        )
        return out

    def reference(
        self,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
    ) -> ReferenceOutput:
        """The same layer and weights on diffusers' ``AttnProcessor``, in ``dtype``."""
        oracle = build_diffusers_attention(
            self.shapes.query_dim,
            self.shapes.context_dim,
            heads=self.heads,
            head_dim=self.head_dim,
            qkv_bias=projection(self.module, "to_q").bias is not None,
        ).to(device=self.device, dtype=dtype)
        self.weights(dtype).load_into(oracle)
        seen: list[Tensor] = []
        handle = projection(oracle, "to_out").register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].detach())
        )
        try:
            with torch.no_grad():
                output = oracle(
                    x.to(dtype),
                    encoder_hidden_states=context.to(dtype),
                    attention_mask=self._additive(mask, dtype),
                )
        finally:
            handle.remove()
        return ReferenceOutput(output=output, merged=seen[-1])

    @classmethod
    def build(
        cls,
        processor_factory: Callable[[], Any],
        shapes: AttentionShapes,
        *,
        device: str,
        dtype: torch.dtype,
        reinitialize: bool,
    ) -> ProcessorSubject:
        """A seeded ``Attention(query_dim, cross_attention_dim, heads, dim_head)`` with the
        processor set; q/k/v biases on odd seeds (SD has none, other models do)."""
        label = getattr(processor_factory, "__qualname__", None) or type(processor_factory).__name__
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(shapes.seed)
            module = build_diffusers_attention(
                shapes.query_dim,
                shapes.context_dim,
                heads=shapes.heads,
                head_dim=shapes.head_dim,
                processor=processor_factory(),
                qkv_bias=shapes.seed % 2 == 1,
            )
        if reinitialize:
            seed_projections(module, shapes.seed)
        module.to(device=device, dtype=dtype).eval()
        return cls(module, shapes, device=device, dtype=dtype, label=f"Attention with {label}()")
