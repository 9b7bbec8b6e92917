"""Tracing a ``torch.compile``'d model without touching its compiled graph.

Hooks inside a compiled region break the graph and, added or removed, make dynamo recompile.
So a compiled model gets one hook, on the wrapper, outside the graph: a call with a new input
signature first runs the original module eagerly, hooked as usual, to record the journey (the
RNG state restored after, the output discarded), then the compiled forward runs untouched. A
call of a signature seen before only counts towards the records its first call made; one seen
in an earlier trace of the same model replays what that trace learned, with no eager forward.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from shapetrace.journey import LayerRecord
from shapetrace.tracing._hooks import CallHooks, model_signature
from shapetrace.tracing._signature import signature

if TYPE_CHECKING:
    from shapetrace.tracing._discover import Discovered
    from shapetrace.tracing.tracer import Tracer

__all__ = ["compiled_original", "shadow_hook"]


def compiled_original(module: nn.Module) -> nn.Module | None:
    """The module a ``torch.compile(module)`` wrapper runs, or None for a plain module."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return None
    original = getattr(module, "_orig_mod", None) if isinstance(module, OptimizedModule) else None
    return original if isinstance(original, nn.Module) else None


def _rng_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def shadow_hook(
    tracer: Tracer, original: nn.Module, found: Discovered
) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
    """The wrapper's pre-hook: record each new signature from an eager shadow forward."""
    seen: dict[Hashable, list[LayerRecord]] = {}

    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hooks = tracer._hooks
        if hooks is None or not tracer._ours():
            return
        key = signature(args, kwargs, module.training)
        if key in seen:
            for record in seen[key]:
                record.calls += 1
            return
        hooks.journal.touched = []
        if _replayed(hooks, original, found, args, kwargs):
            seen[key] = list({id(r): r for r in hooks.journal.touched}.values())
            hooks.journal.touched = None
            return
        start = len(tracer._handles)
        tracer._install(found, root=original)
        try:
            with torch.random.fork_rng(devices=_rng_devices()):
                original(*args, **kwargs)
        finally:
            for handle in tracer._handles[start:]:
                handle.remove()
            del tracer._handles[start:]
            tracer._captured.clear()
        touched = hooks.journal.touched
        seen[key] = list({id(r): r for r in touched}.values())
        hooks.journal.touched = None

    return pre


def _replayed(
    hooks: CallHooks, original: nn.Module, found: Discovered, args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> bool:
    """Count a call whose signature an earlier trace of ``original`` learned as a whole (the
    same key the eager model call computes), with no forward; False when there is none, or
    when every call or a monitor sample is asked for."""
    if hooks.every_call or hooks.monitor_every is not None:
        return False
    key = model_signature(found.layers, args, kwargs, original.training)
    known = hooks.memory.roots.get(key)
    if known is None:
        return False
    names = {info.path: info.name for info in found.layers}
    for path, _key, learned in known:
        name = names.get(path, path)
        call = hooks.counts.get(name, 0)
        hooks.counts[name] = call + 1
        if learned.record is None:
            hooks.list_unread(learned.unread)
        else:
            hooks.journal.repeated(id(learned), learned.record, call)
    return True
