"""A user's module of the check contract, ``forward(x, context)``, as a check subject."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from shapetrace.testing._gradients import Gradients, requiring_grad, with_gradients
from shapetrace.testing._subject import PROJECTIONS, AttentionSubject, seed_parameters
from shapetrace.testing._violation import ModuleContractError
from shapetrace.testing._weights import ProjectionWeights, projection
from shapetrace.testing.implementations import reference_attention
from shapetrace.testing.strategies import AttentionShapes

__all__ = ["ModuleSubject", "check_to_out_contract", "factory_label"]


def factory_label(factory: Any) -> str:
    """How failure messages name a factory."""
    return str(getattr(factory, "__qualname__", None) or type(factory).__name__)


def check_to_out_contract(subject: AttentionSubject, x: Tensor, context: Tensor) -> None:
    """Raise ModuleContractError unless ``to_out`` receives (at least) the B*N rows of the
    merged heads, width ``inner``: in one call or in chunks, in any layout, padded or not.
    Fewer rows mean some output rows did not come through ``to_out``."""
    seen: list[tuple[int, ...]] = []
    to_out = projection(subject.module, "to_out")
    handle = to_out.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    try:
        subject.run(x, context)
    finally:
        handle.remove()
    s = subject.shapes
    rows = sum(math.prod(shape[:-1]) for shape in seen)
    expected = (
        f"the B*N = {s.batch * s.query_tokens} rows of the merged heads (B, N, inner) = "
        f"({s.batch}, {s.query_tokens}, {subject.inner}), whole or in chunks"
    )
    where = f"{subject.label}, {subject.call_text(x)} with {s.describe()}"
    if not seen:
        raise ModuleContractError(
            f"{where}: to_out saw nothing; the contract passes {expected} through to_out "
            "(call the module, not F.linear on its weights)"
        )
    if rows < s.batch * s.query_tokens:
        raise ModuleContractError(
            f"{where}: to_out saw {len(seen)} call(s) on {', '.join(map(str, seen))}, {rows} "
            f"rows in all, fewer than {expected}: every output row must come through to_out"
        )


class ModuleSubject(AttentionSubject):
    """A module of the contract: ``forward(x, context)``; its oracle is the math reference."""

    def call(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Any:
        if mask is not None:
            raise ModuleContractError(f"{self.label}: forward(x, context) takes no mask")
        return self.module(x, context)

    def parameters(self) -> dict[str, Tensor]:
        """The projections' parameters by name (``to_q.weight``, ``to_out.bias``, ...)."""
        params: dict[str, Tensor] = {}
        for name in PROJECTIONS:
            layer = projection(self.module, name)
            params[f"{name}.weight"] = layer.weight
            if layer.bias is not None:
                params[f"{name}.bias"] = layer.bias
        return params

    def gradients(
        self, x: Tensor, context: Tensor, cotangent: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Gradients]:
        """The output with autograd on and the gradients to x, context and the projections."""
        if mask is not None:
            raise ModuleContractError(f"{self.label}: forward(x, context) takes no mask")
        params = self.parameters()
        with requiring_grad(params):
            return with_gradients(
                lambda t: self.module(t["x"], t["context"]),
                {"x": x, "context": context},
                dict(params),
                cotangent,
            )

    def reference_gradients(
        self,
        x: Tensor,
        context: Tensor,
        cotangent: Tensor,
        mask: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
    ) -> tuple[Tensor, Gradients]:
        """The same from the math reference in ``dtype`` (``mask`` must be None)."""
        params = {
            n: p.detach().to(dtype).clone().requires_grad_(True)
            for n, p in self.parameters().items()
        }

        def forward(t: dict[str, Tensor]) -> Tensor:
            w = ProjectionWeights(
                q_weight=params["to_q.weight"],
                q_bias=params.get("to_q.bias"),
                k_weight=params["to_k.weight"],
                k_bias=params.get("to_k.bias"),
                v_weight=params["to_v.weight"],
                v_bias=params.get("to_v.bias"),
                out_weight=params["to_out.weight"],
                out_bias=params.get("to_out.bias"),
            )
            return reference_attention(w, t["x"], t["context"], heads=self.heads).output

        inputs = {"x": x.to(dtype), "context": context.to(dtype)}
        return with_gradients(forward, inputs, dict(params), cotangent.to(dtype))

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
        label = factory_label(factory)
        call = f"{label}({shapes.query_dim}, {shapes.context_dim}, {shapes.heads})"
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(shapes.seed)  # CPU only: cheap
            try:
                module = factory(shapes.query_dim, shapes.context_dim, shapes.heads)
            except TypeError as err:
                raise ModuleContractError(
                    f"{call} raised TypeError: {err}; the factory is called as "
                    "factory(query_dim, context_dim, heads), e.g. "
                    "lambda q, c, h: MyAttention(q, c, heads=h)"
                ) from err
        if not isinstance(module, nn.Module):
            raise ModuleContractError(
                f"{call} returned {type(module).__name__}, not an nn.Module: the factory must "
                "return the module, e.g. lambda q, c, h: MyAttention(q, c, heads=h)"
            )
        try:
            layers = {name: projection(module, name) for name in PROJECTIONS}
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
                    f"{call}: {name} takes {layers[name].in_features} features, expected "
                    f"{width} (factory arguments are query_dim, context_dim, heads)"
                )
        inner = layers["to_q"].out_features
        if inner % shapes.heads:
            raise ModuleContractError(
                f"{call}: to_q gives {inner} features, not divisible by heads={shapes.heads}"
            )
        if reinitialize:
            seed_parameters(module, shapes.seed, only=PROJECTIONS)
        module.to(device=device, dtype=dtype).eval()
        return cls(module, shapes, device=device, dtype=dtype, label=label)
