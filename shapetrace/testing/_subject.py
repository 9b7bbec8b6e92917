"""The thing a property checks: one attention module built for one example's shapes.

A subject builds the module (seeded, so every example is reproducible), draws seeded
inputs, runs the module while capturing what enters ``to_out`` (the merged heads), computes
references from the module's own weights, and patches projection weights for a probe.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shapetrace.testing._violation import InvariantViolation, ModuleContractError
from shapetrace.testing.implementations import (
    ProjectionWeights,
    ReferenceOutput,
    projection,
    reference_attention,
)
from shapetrace.testing.strategies import AttentionShapes, random_tensor
from shapetrace.testing.tolerance import calibrated_atol

__all__ = ["AttentionSubject", "Capture", "ModuleSubject", "seed_projections", "violation"]

_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


@dataclass(frozen=True)
class Capture:
    """One forward: its ``output`` and the ``merged`` heads that entered ``to_out``
    (None when forward never called ``to_out``)."""

    output: Tensor
    merged: Tensor | None


def seed_projections(module: nn.Module, seed: int) -> None:
    """Seeded weights with std 1/sqrt(fan_in) and biases with std 0.5 for the projections,
    so scores are O(1): large enough to tell 1/sqrt(head_dim) from other scales."""
    generator = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for name in _PROJECTIONS:
            layer = projection(module, name)
            out_f, in_f = layer.weight.shape
            weight = torch.randn((out_f, in_f), generator=generator, dtype=torch.float64)
            layer.weight.copy_(weight / math.sqrt(in_f))
            if layer.bias is not None:
                layer.bias.copy_(0.5 * torch.randn(out_f, generator=generator, dtype=torch.float64))


class AttentionSubject:
    """Base: a module under test, its shapes, device and dtype. Subclasses say how to call it."""

    supports_mask = False
    oracle = "the float64 reference computed from the module's own to_q/to_k/to_v/to_out weights"

    def __init__(
        self,
        module: nn.Module,
        shapes: AttentionShapes,
        *,
        device: str,
        dtype: torch.dtype,
        label: str,
    ) -> None:
        self.module = module
        self.shapes = shapes
        self.device = device
        self.dtype = dtype
        self.label = label
        self.heads = shapes.heads
        self.inner = projection(module, "to_q").out_features
        self.head_dim = self.inner // self.heads

    def describe(self) -> str:
        """What was checked, for failure messages."""
        return f"{self.label} (device={self.device}, dtype={self.dtype})"

    # -- running ---------------------------------------------------------------------------
    def call(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        """The module's forward; ``mask`` (B, M) bool, True = attend."""
        raise NotImplementedError

    def run(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Capture:
        """Forward under ``torch.no_grad``, capturing the input of ``to_out``."""
        seen: list[Tensor] = []

        def grab(_module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0].detach())

        handle = projection(self.module, "to_out").register_forward_pre_hook(grab)
        try:
            with torch.no_grad():
                output = self.call(x, context, mask)
        finally:
            handle.remove()
        if not isinstance(output, Tensor):
            raise ModuleContractError(
                f"{self.label}: forward returned {type(output).__name__}, expected a Tensor"
            )
        return Capture(output=output, merged=seen[-1] if seen else None)

    def inputs(self, *, salt: int = 0, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Seeded x (B, N, query_dim) and context (B, M, context_dim) in the subject's dtype."""
        s = self.shapes
        base = s.seed * 1009 + 2 * salt
        x = random_tensor(
            (s.batch, s.query_tokens, s.query_dim),
            seed=base,
            dtype=self.dtype,
            device=self.device,
            scale=scale,
        )
        context = random_tensor(
            (s.batch, s.context_tokens, s.context_dim),
            seed=base + 1,
            dtype=self.dtype,
            device=self.device,
            scale=scale,
        )
        return x, context

    # -- references ------------------------------------------------------------------------
    def weights(self, dtype: torch.dtype = torch.float64) -> ProjectionWeights:
        """The module's current projection weights, cast to ``dtype``."""
        return ProjectionWeights.from_module(self.module, dtype=dtype)

    def math_reference(
        self,
        x: Tensor,
        context: Tensor,
        *,
        scale: float | None = None,
        mask: Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> ReferenceOutput:
        """Attention computed from the module's own weights, in ``dtype``."""
        return reference_attention(
            self.weights(dtype),
            x.to(dtype),
            context.to(dtype),
            heads=self.heads,
            scale=scale,
            mask=mask,
        )

    def reference(
        self,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
    ) -> ReferenceOutput:
        """The oracle the output must agree with (the math reference unless overridden)."""
        return self.math_reference(x, context, mask=mask, dtype=dtype)

    def atol(self, reference64: Tensor, reference_lowp: Tensor) -> float:
        """The self-calibrating tolerance for this subject's dtype."""
        return calibrated_atol(reference64, reference_lowp, dtype=self.dtype)

    def tolerances(
        self, x: Tensor, context: Tensor, mask: Tensor | None = None
    ) -> tuple[float, float]:
        """(atol on the output, atol on the merged heads) for these inputs."""
        ref64 = self.math_reference(x, context, mask=mask)
        lowp = self.math_reference(x, context, mask=mask, dtype=self.dtype)
        return self.atol(ref64.output, lowp.output), self.atol(ref64.merged, lowp.merged)

    # -- probes ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def patched(self, changes: dict[str, tuple[Tensor, Tensor | None]]) -> Iterator[None]:
        """Temporarily set projections' (weight, bias): ``{"to_k": (w, b)}``; restored after."""
        saved: list[tuple[nn.Linear, Tensor, Tensor | None]] = []
        try:
            with torch.no_grad():
                for name, (weight, bias) in changes.items():
                    layer = projection(self.module, name)
                    old_bias = None if layer.bias is None else layer.bias.detach().clone()
                    saved.append((layer, layer.weight.detach().clone(), old_bias))
                    layer.weight.copy_(weight)
                    if layer.bias is not None and bias is not None:
                        layer.bias.copy_(bias)
            yield
        finally:
            with torch.no_grad():
                for layer, weight, bias in saved:
                    layer.weight.copy_(weight)
                    if bias is not None and layer.bias is not None:
                        layer.bias.copy_(bias)


class ModuleSubject(AttentionSubject):
    """A module of the contract: ``forward(x, context)``."""

    def call(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            raise ModuleContractError(f"{self.label}: forward(x, context) takes no mask")
        out: Tensor = self.module(x, context)
        return out

    @classmethod
    def build(
        cls,
        factory: Callable[[int, int, int], nn.Module],
        shapes: AttentionShapes,
        *,
        device: str,
        dtype: torch.dtype,
        reinitialize: bool,
    ) -> ModuleSubject:
        """Call ``factory(query_dim, context_dim, heads)`` (seeded) and check the contract."""
        label = getattr(factory, "__qualname__", None) or type(factory).__name__
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(shapes.seed)
            module = factory(shapes.query_dim, shapes.context_dim, shapes.heads)
        if not isinstance(module, nn.Module):
            raise ModuleContractError(f"{label} returned {type(module).__name__}, not an nn.Module")
        try:
            layers = {name: projection(module, name) for name in _PROJECTIONS}
        except TypeError as err:
            raise ModuleContractError(f"{label}: {err}") from None
        expected_in = {
            "to_q": shapes.query_dim,
            "to_k": shapes.context_dim,
            "to_v": shapes.context_dim,
        }
        for name, width in expected_in.items():
            if layers[name].in_features != width:
                raise ModuleContractError(
                    f"{label}({shapes.query_dim}, {shapes.context_dim}, {shapes.heads}): "
                    f"{name} takes "
                    f"{layers[name].in_features} features, expected {width} "
                    "(factory arguments are query_dim, context_dim, heads)"
                )
        inner = layers["to_q"].out_features
        if inner % shapes.heads:
            raise ModuleContractError(
                f"{label}: to_q gives {inner} features, not divisible by heads={shapes.heads}"
            )
        if reinitialize:
            seed_projections(module, shapes.seed)
        module.to(device=device, dtype=dtype).eval()
        return cls(module, shapes, device=device, dtype=dtype, label=label)


def violation(invariant: str, subject: AttentionSubject, detail: str) -> InvariantViolation:
    """An InvariantViolation for ``subject``'s shapes."""
    return InvariantViolation(invariant, detail, shapes=subject.shapes)
