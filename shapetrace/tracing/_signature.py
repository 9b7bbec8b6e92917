"""A call's input signature: everything a layer's journey can depend on.

Two calls with the same signature take the same path through the same ops with the same
shapes, so the first one's journey is every later one's. It holds the tensors' shapes, dtypes,
devices and grad flags (nested in tuples, lists and dicts), small Python values as they are,
other objects by type, and the modes torch runs in: grad, inference, autocast.

>>> a = signature((torch.zeros(2, 64, 32),), {"scale": 1.0})
>>> a == signature((torch.ones(2, 64, 32),), {"scale": 1.0})
True
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

__all__ = ["modes", "signature"]


def _value(v: Any) -> Hashable:
    if isinstance(v, torch.Tensor):
        return (v.shape, v.dtype, v.device, v.requires_grad)
    if isinstance(v, (tuple, list)):
        return tuple(_value(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _value(x)) for k, x in v.items())
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return type(v).__qualname__


def modes() -> tuple[Hashable, ...]:
    """Grad and inference mode, and the autocast state of the CPU and CUDA."""
    return (
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
        torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda"),
    )


def signature(args: tuple[Any, ...], kwargs: dict[str, Any], *extra: Hashable) -> Hashable:
    """The signature of a call with ``args`` and ``kwargs``, plus ``extra`` facts (the
    processor, the candidate grids, the training flag)."""
    return (_value(args), _value(kwargs), modes(), extra)
