"""The thing a property checks: one attention layer built for one example's shapes.

A subject builds the layer (seeded, so every example is reproducible), draws seeded inputs,
runs it and judges only what it returns: the output's shape, dtype and finiteness on every
run, and what entered ``to_out`` by reading it back through the output with ``to_out`` set
to a selection matrix (so calling ``to_out`` per query chunk, per batch row or sequence-first
is all the same). References come from the layer's own weights; subclasses say how to call
the layer and what their oracle is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from shapetrace.testing._configurations import Configuration
from shapetrace.testing._gradients import Gradients
from shapetrace.testing._violation import InvariantViolation, ModuleContractError
from shapetrace.testing._weights import ProjectionWeights, projection
from shapetrace.testing.implementations import ReferenceOutput, reference_attention
from shapetrace.testing.strategies import AttentionShapes, random_tensor
from shapetrace.testing.tolerance import DEFAULT_FUDGE, calibrated_atol

__all__ = ["PLAIN_CROSS", "AttentionSubject", "Patch", "seed_parameters", "violation"]

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")

PLAIN_CROSS = Configuration("cross", "cross-attention on (B, N, C) tokens", primary=True)
"""What a module of the check contract is: plain cross-attention, ``forward(x, context)``."""

Patch = dict[str, tuple[Tensor, Tensor | None]]
"""New (weight, bias) by Linear name: ``{"to_k": (w, b)}``."""


def seed_parameters(module: nn.Module, seed: int, *, only: tuple[str, ...] | None = None) -> None:
    """Seeded values for every Linear (std 1/sqrt(fan_in), biases std 0.5) and every norm's
    affine parameters (around 1 and 0) in ``module`` (or only the submodules named in
    ``only``), so scores are O(1), large enough to tell scales apart, and no norm is an
    identity a bug could hide behind."""
    generator = torch.Generator().manual_seed(seed + 7919)
    named = (
        list(module.named_modules())
        if only is None
        else [(name, projection(module, name)) for name in only]
    )
    with torch.no_grad():
        for name, layer in named:
            if name.startswith("processor"):
                continue  # a processor's own weights are its business
            if isinstance(layer, nn.Linear):
                out_f, in_f = layer.weight.shape
                weight = torch.randn((out_f, in_f), generator=generator, dtype=torch.float64)
                layer.weight.copy_(weight / math.sqrt(in_f))
                if layer.bias is not None:
                    bias = torch.randn(out_f, generator=generator, dtype=torch.float64)
                    layer.bias.copy_(0.5 * bias)
            elif isinstance(layer, (nn.GroupNorm, nn.LayerNorm)) and layer.weight is not None:
                n = layer.weight.numel()
                layer.weight.copy_(
                    1 + 0.3 * torch.randn(n, generator=generator).view_as(layer.weight)
                )
                if layer.bias is not None:
                    layer.bias.copy_(0.3 * torch.randn(n, generator=generator).view_as(layer.bias))


def violation(invariant: str, subject: AttentionSubject, detail: str) -> InvariantViolation:
    """An InvariantViolation for ``subject``'s shapes."""
    return InvariantViolation(invariant, detail, shapes=subject.shapes)


class AttentionSubject:
    """Base: a layer under test, its shapes, configuration, device and dtype."""

    oracle = "the float64 reference computed from the module's own to_q/to_k/to_v/to_out weights"

    def __init__(
        self,
        module: nn.Module,
        shapes: AttentionShapes,
        *,
        device: str,
        dtype: torch.dtype,
        label: str,
        configuration: Configuration = PLAIN_CROSS,
    ) -> None:
        self.module = module
        self.shapes = shapes
        self.device = device
        self.dtype = dtype
        self.label = label
        self.configuration = configuration
        self.heads = shapes.heads
        self.inner = projection(module, "to_q").out_features
        self.head_dim = self.inner // self.heads

    @property
    def key_tokens(self) -> int:
        """How many keys each query sees (and a key mask covers)."""
        c, s = self.configuration, self.shapes
        if c.added_kv:
            return s.context_tokens + (0 if c.only_cross else s.query_tokens)
        return s.query_tokens if c.self_attention else s.context_tokens

    @property
    def masks(self) -> bool:
        """Whether the layer takes a key mask."""
        return False

    def describe(self) -> str:
        """What was checked, for failure messages."""
        return f"{self.label} (device={self.device}, dtype={self.dtype})"

    # -- running ---------------------------------------------------------------------------
    def call(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Any:
        """The layer's forward on tokens x (B, N, query_dim); ``mask`` (B, keys) bool, True =
        attend. Returns what the layer returned, as tokens (B, N, query_dim) when it can."""
        raise NotImplementedError

    def run(
        self, x: Tensor, context: Tensor, mask: Tensor | None = None, *, finite: bool = True
    ) -> Tensor:
        """The output under ``torch.no_grad``, its shape and dtype checked (``output_shape``)
        and, unless ``finite=False``, its finiteness (``finite_output``)."""
        with torch.no_grad():
            output = self.call(x, context, mask)
        return self.checked(output, x, finite=finite)

    def checked(self, output: Any, x: Tensor, *, finite: bool = True) -> Tensor:
        """``output`` after the checks every run gets."""
        if not isinstance(output, Tensor):
            raise ModuleContractError(
                f"{self.label}: forward returned {type(output).__name__}, expected a Tensor"
            )
        if output.shape != x.shape:
            raise violation(
                "output_shape",
                self,
                f"{self.call_text(x)} returned shape "
                f"{tuple(output.shape)}, expected the query's shape {tuple(x.shape)}",
            )
        if output.dtype != x.dtype:
            raise violation(
                "output_shape",
                self,
                f"{self.call_text(x)} returned {output.dtype} for {x.dtype} inputs",
            )
        if finite and not bool(torch.isfinite(output).all()):
            bad = int((~torch.isfinite(output)).sum())
            nan = int(output.isnan().sum())
            raise violation(
                "finite_output",
                self,
                f"{self.call_text(x)} returned {bad} "
                f"non-finite values of {output.numel()} ({nan} NaN) for inputs of "
                "std 1: the output must be finite",
            )
        return output

    def call_text(self, x: Tensor) -> str:
        """The call, as failure messages say it."""
        s = self.shapes
        return (
            f"forward(x {tuple(x.shape)}, context ({s.batch}, {s.context_tokens}, {s.context_dim}))"
        )

    def attended(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """What entered ``to_out`` (B, N, inner), read from the output with ``to_out`` set to
        a selection of channels (several runs when ``query_dim < inner``). On configurations
        with a residual or rescale it is offset and scaled: use differences there."""
        to_out = projection(self.module, "to_out")
        width, parts = to_out.out_features, []
        for start in range(0, self.inner, width):
            stop = min(start + width, self.inner)
            select = torch.zeros_like(to_out.weight)  # (query_dim, inner)
            select[torch.arange(stop - start), torch.arange(start, stop)] = 1
            bias = None if to_out.bias is None else torch.zeros_like(to_out.bias)
            with self.patched({"to_out": (select, bias)}):
                parts.append(self.run(x, context, mask)[..., : stop - start])
        return torch.cat(parts, dim=-1)

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
        """The layer's current projection weights, cast to ``dtype``."""
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
        """Plain attention computed from the layer's own weights, in ``dtype`` (meaningful
        where ``configuration.plain_math``; self-attention attends over x)."""
        keys = x if self.configuration.self_attention else context
        return reference_attention(
            self.weights(dtype),
            x.to(dtype),
            keys.to(dtype),
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
    ) -> Tensor:
        """The oracle's output (the math reference unless overridden)."""
        return self.math_reference(x, context, mask=mask, dtype=dtype).output

    def agreement_hint(self) -> str:
        """A hint for a reference mismatch ("" unless a subclass knows one)."""
        return ""

    def gradients(
        self, x: Tensor, context: Tensor, cotangent: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Gradients]:
        """The output with autograd on, and the gradients of sum(output * cotangent) by name."""
        raise NotImplementedError

    def reference_gradients(
        self,
        x: Tensor,
        context: Tensor,
        cotangent: Tensor,
        mask: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
    ) -> tuple[Tensor, Gradients]:
        """The same from the oracle, in ``dtype``."""
        raise NotImplementedError

    def atol(self, reference64: Tensor, reference_lowp: Tensor, *, fudge: float = 1.0) -> float:
        """The self-calibrating tolerance for this subject's dtype (its fudge times ``fudge``)."""
        base = DEFAULT_FUDGE.get(self.dtype, 4.0)
        return calibrated_atol(reference64, reference_lowp, dtype=self.dtype, fudge=base * fudge)

    def output_atol(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> float:
        """The tolerance on the output for these inputs, calibrated on the oracle."""
        ref64 = self.reference(x, context, mask)
        return self.atol(ref64, self.reference(x, context, mask, dtype=self.dtype))

    def attended_atol(self, x: Tensor, context: Tensor) -> float:
        """The tolerance on what enters to_out (on the output where that is not plain math)."""
        if not self.configuration.plain_math:
            return self.output_atol(x, context)
        ref64 = self.math_reference(x, context)
        return self.atol(ref64.merged, self.math_reference(x, context, dtype=self.dtype).merged)

    # -- probes ----------------------------------------------------------------------------
    def linear(self, name: str) -> nn.Linear:
        """The Linear layer ``name`` (to_q, to_k, to_v, to_out, add_k_proj, ...)."""
        return projection(self.module, name)

    @contextlib.contextmanager
    def patched(self, changes: Patch) -> Iterator[None]:
        """Temporarily set Linear layers' (weight, bias): ``{"to_k": (w, b)}``; restored after."""
        saved: list[tuple[nn.Linear, Tensor, Tensor | None]] = []
        try:
            with torch.no_grad():
                for name, (weight, bias) in changes.items():
                    layer = self.linear(name)
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

    def key_projections(self) -> tuple[str, ...]:
        """The Linear layers keys come from."""
        return ("to_k",)

    def value_projections(self) -> tuple[str, ...]:
        """The Linear layers values come from."""
        return tuple(name.replace("k", "v", 1) for name in self.key_projections())

    def logit_scaling(self, factor: float) -> Patch:
        """to_q and the key projections times ``factor``: every score times ``factor**2``."""
        changes: Patch = {}
        for name in ("to_q", *self.key_projections()):
            layer = self.linear(name)
            bias = None if layer.bias is None else layer.bias.detach() * factor
            changes[name] = (layer.weight.detach() * factor, bias)
        return changes
