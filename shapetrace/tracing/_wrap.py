"""The light replay's hooks as wrappers of a module's ``forward``.

torch runs a module that has any hook through its general path (a closure, a set of hooks
called, a try block) and a module without hooks straight to ``forward``. A forward hook on
each of the tiny UNet's 32 attention layers and 32 captured projections costs about 0.3 ms per
forward more than a wrapper doing the same work (measured in one process, 250 paired rounds).

A wrapper sees the output of ``forward`` itself, before the module's forward hooks. So a
module gets a wrapper only when it has no forward hook and there is no global one; otherwise,
and with ``hook=True``, it gets a real forward hook, called after the ones already there. A
wrapper also tells ``post`` whether its output is final: ``False`` when a forward hook was
added after the wrapper went in (a hook may replace the output the model goes on with).

``nn.MultiheadAttention`` layers keep real hooks: ``nn.TransformerEncoderLayer`` takes a fused
kernel that never calls its ``self_attn`` unless a hook is on one of its modules, so a hook is
what makes the layer run as the recorded call ran.

A wrapper is removed from the module when its handle is removed. If another wrapper was put
over it since, ours is unlinked from under it when that one is ours too; under other code's
wrapper it stays a plain pass-through (that code calls it), and when that code puts it back as
the module's forward, its next call takes it off.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from torch import nn
from torch.nn.modules import module as _torch_module

__all__ = ["ForwardWrap", "Removable", "watch"]

Post = Callable[[Any, bool], None]  # post(output or None when forward raised, final)


class Removable(Protocol):
    """A hook handle or a wrapper: what a tracer removes when its block ends."""

    def remove(self) -> None: ...


def _hooked(module: nn.Module) -> bool:
    """Whether torch would run forward hooks after this module's ``forward``."""
    return bool(module._forward_hooks or _torch_module._global_forward_hooks)


class ForwardWrap:
    """``module.forward`` replaced by one that calls ``post`` after it (also with ``None``
    when it raised an ``Exception``, if ``always``); ``remove()`` puts back what was there."""

    def __init__(self, module: nn.Module, post: Post, *, always: bool) -> None:
        self.module = module
        state = module.__dict__
        self.had = "forward" in state
        self.previous = state.get("forward")
        self.inner: Callable[..., Any] = module.forward
        self.above: ForwardWrap | None = None
        self.active = True
        wrap = self

        if always:

            def forward(*args: Any, **kwargs: Any) -> Any:
                if not wrap.active:
                    return wrap.passed(*args, **kwargs)
                try:
                    out = wrap.inner(*args, **kwargs)
                except Exception:
                    if wrap.active:
                        with contextlib.suppress(Exception):  # the forward's own error goes on
                            post(None, True)
                    raise
                if wrap.active:
                    post(out, not _hooked(module))
                return out

        else:

            def forward(*args: Any, **kwargs: Any) -> Any:
                if not wrap.active:
                    return wrap.passed(*args, **kwargs)
                out = wrap.inner(*args, **kwargs)
                post(out, not _hooked(module))
                return out

        forward.__wrapped__ = self.inner  # type: ignore[attr-defined]  # inspect.signature
        forward._shapetrace_wrap = self  # type: ignore[attr-defined]
        below = getattr(self.previous, "_shapetrace_wrap", None)
        if isinstance(below, ForwardWrap):
            below.above = self
        # a weak reference: a strong one would make a cycle (the function holds this object),
        # and cycles wait for the garbage collector; 64 per forward leave the heap fragmented
        self.forward = weakref.ref(forward)
        state["forward"] = forward

    def remove(self) -> None:
        if not self.active:
            return
        self.active = False
        if not self._restore():
            self._unlink()

    def passed(self, *args: Any, **kwargs: Any) -> Any:
        """A call after ``remove()``: other code put this wrapper back (it had wrapped over
        it and restored what it found); take it off now, and run the forward."""
        self._restore()
        return self.inner(*args, **kwargs)

    def _restore(self) -> bool:
        """Put back what ``forward`` was, if this wrapper is the module's forward now."""
        state = self.module.__dict__
        if state.get("forward") is not self.forward():
            return False
        if self.had:
            state["forward"] = self.previous
        else:
            state.pop("forward", None)
        below = getattr(self.previous, "_shapetrace_wrap", None)
        if isinstance(below, ForwardWrap):
            below.above = None
        return True

    def _unlink(self) -> None:
        if self.above is not None and self.above.active:  # ours on top: unlink this one
            above = self.above
            above.inner, above.had, above.previous = self.inner, self.had, self.previous
            above.forward().__wrapped__ = self.inner  # type: ignore[union-attr]
            below = getattr(self.previous, "_shapetrace_wrap", None)
            if isinstance(below, ForwardWrap):
                below.above = above
        # else: other code wrapped over this one; it stays as a pass-through till put back


class _Hook:
    """A real forward hook with the wrapper's ``post(out, final)`` signature."""

    def __init__(self, module: nn.Module, post: Post, *, always: bool) -> None:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            post(out, True)

        self.handle = module.register_forward_hook(hook, always_call=always)

    def remove(self) -> None:
        self.handle.remove()


def watch(
    module: nn.Module, post: Post, *, always: bool, hook: bool = False
) -> ForwardWrap | _Hook:
    """Call ``post(out, final)`` after each call of ``module`` (with ``always``, also
    ``post(None, True)`` when it raises): a wrapper when nothing would run after ``forward``,
    else (or with ``hook``) a forward hook after the ones there."""
    if hook or _hooked(module):
        return _Hook(module, post, always=always)
    return ForwardWrap(module, post, always=always)
