"""Shared test helpers: hook counts and model snapshots."""

from __future__ import annotations

import torch
from torch import nn


def hook_count(model: nn.Module) -> int:
    """All module hooks of the model, plus torch's global module hooks, plus shapetrace's
    wrappers of a module's forward (how the tracer's light replay watches a module)."""
    from torch.nn.modules import module as module_mod

    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += hasattr(m.__dict__.get("forward"), "_shapetrace_wrap")
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    total += len(module_mod._global_forward_hooks) + len(module_mod._global_forward_pre_hooks)
    return total


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == snapshot.keys() and all(torch.equal(now[k], snapshot[k]) for k in now)


def processors(model: nn.Module) -> dict[str, type]:
    return {k: type(v) for k, v in getattr(model, "attn_processors", {}).items()}
