"""Running a layer with autograd on: its output and the gradients of ``sum(output * cotangent)``
with respect to its inputs and parameters, by name.

Example::

    >>> layer = torch.nn.Linear(3, 2)
    >>> x = torch.randn(4, 3)
    >>> out, grads = with_gradients(lambda t: layer(t["x"]), {"x": x},
    ...                             dict(layer.named_parameters()), torch.ones(4, 2))
    >>> sorted(grads), tuple(grads["weight"].shape)
    (['bias', 'weight', 'x'], (2, 3))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

__all__ = ["Gradients", "requiring_grad", "with_gradients"]

Gradients = dict[str, Tensor | None]
"""Gradient by input or parameter name; None where the output does not depend on it."""


@contextlib.contextmanager
def requiring_grad(parameters: Mapping[str, Tensor]) -> Iterator[None]:
    """Parameters set to ``requires_grad=True`` for the block, restored after."""
    flags = {name: p.requires_grad for name, p in parameters.items()}
    try:
        for p in parameters.values():
            p.requires_grad_(True)
        yield
    finally:
        for name, p in parameters.items():
            p.requires_grad_(flags[name])


def with_gradients(
    forward: Callable[[dict[str, Tensor]], Tensor],
    inputs: dict[str, Tensor],
    parameters: dict[str, Tensor],
    cotangent: Tensor,
) -> tuple[Tensor, Gradients]:
    """``forward(leaves)`` with autograd on, where ``leaves`` are detached copies of
    ``inputs`` that require grad (``parameters`` are used as they are and must require grad);
    the output (detached) and the gradients of ``sum(output * cotangent)`` by name. Nothing
    accumulates into ``.grad``."""
    leaves = {name: t.detach().clone().requires_grad_(True) for name, t in inputs.items()}
    with torch.enable_grad():
        output = forward(leaves)
        targets = {**leaves, **parameters}
        if not output.requires_grad:
            return output.detach(), dict.fromkeys(targets)
        loss = (output * cotangent.to(output.dtype)).sum()
        grads = torch.autograd.grad(loss, list(targets.values()), allow_unused=True)
    return output.detach(), dict(zip(targets, grads))
