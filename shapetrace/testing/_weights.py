"""Reading and writing an attention module's four projections (to_q, to_k, to_v, to_out)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ProjectionWeights", "projection"]


def projection(module: nn.Module, name: str) -> nn.Linear:
    """``module.<name>`` as a Linear: the attribute itself, or the first item of a container
    (diffusers' ``to_out`` is ``ModuleList([Linear, Dropout])``)."""
    layer: Any = getattr(module, name, None)
    if isinstance(layer, (nn.Sequential, nn.ModuleList)) and len(layer) > 0:
        layer = layer[0]
    if not isinstance(layer, nn.Linear):
        found = "nothing" if layer is None else type(layer).__name__
        raise TypeError(
            f"{type(module).__name__}.{name} is {found}; the attention contract needs an "
            f"nn.Linear (or a container whose first item is one) named {name}"
        )
    return layer


@dataclass(frozen=True)
class ProjectionWeights:
    """The four projections' weights and biases (None where a Linear has no bias)."""

    q_weight: Tensor
    q_bias: Tensor | None
    k_weight: Tensor
    k_bias: Tensor | None
    v_weight: Tensor
    v_bias: Tensor | None
    out_weight: Tensor
    out_bias: Tensor | None

    @classmethod
    def from_module(
        cls, module: nn.Module, *, dtype: torch.dtype = torch.float64
    ) -> ProjectionWeights:
        """Copies of ``module``'s to_q/to_k/to_v/to_out parameters, cast to ``dtype``."""
        values: dict[str, Tensor | None] = {}
        for short in ("q", "k", "v", "out"):
            layer = projection(module, f"to_{short}")
            values[f"{short}_weight"] = layer.weight.detach().to(dtype).clone()
            bias = layer.bias
            values[f"{short}_bias"] = None if bias is None else bias.detach().to(dtype).clone()
        return cls(**values)  # type: ignore[arg-type]

    def to(
        self, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> ProjectionWeights:
        """The same weights on another dtype and/or device."""
        moved = {
            f.name: None
            if (t := getattr(self, f.name)) is None
            else t.to(device=device, dtype=dtype)
            for f in fields(self)
        }
        return ProjectionWeights(**moved)  # type: ignore[arg-type]

    def load_into(self, module: nn.Module) -> None:
        """Copy these weights into ``module``'s projections (shapes and biases must match)."""
        with torch.no_grad():
            for short in ("q", "k", "v", "out"):
                layer = projection(module, f"to_{short}")
                layer.weight.copy_(getattr(self, f"{short}_weight"))
                bias = getattr(self, f"{short}_bias")
                if (bias is None) != (layer.bias is None):
                    raise TypeError(f"to_{short}: one module has a bias and the other has not")
                if bias is not None and layer.bias is not None:
                    layer.bias.copy_(bias)
