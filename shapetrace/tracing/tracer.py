"""``shapetrace.trace``: hooks on every attention layer and the blocks around them, and a
recorder that follows the data from the layers' inputs to their scores."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from shapetrace.errors import NoAttentionLayersError, ShapeTraceError
from shapetrace.journey import Journey, NotUnderstood
from shapetrace.tracing import _monitors
from shapetrace.tracing._call import CallState
from shapetrace.tracing._discover import Discovered, LayerInfo, discover
from shapetrace.tracing._fire import fire_probes
from shapetrace.tracing._geometry import Grid, first_tensor, grid_of_input, grid_of_patches
from shapetrace.tracing._inputs import layer_inputs, tag_inputs, tag_outputs
from shapetrace.tracing._mha import mha_post, mha_pre
from shapetrace.tracing._probe import Probe
from shapetrace.tracing._recorder import Recorder, Session
from shapetrace.tracing._validate import validate_call, validate_unet

__all__ = ["Tracer", "trace"]

_SILENCED = "module forward hook with ``always_call=True`` raised an exception"


def _check_probes(probes: Iterable[Any]) -> tuple[Probe, ...]:
    checked = tuple(probes)
    for i, probe in enumerate(checked):
        if not callable(getattr(probe, "on_attention", None)):
            raise ShapeTraceError(
                f"probe #{i} ({type(probe).__name__}) has no on_attention(call) method; a probe "
                "is an object with on_attention(call) and, optionally, wants(layer) -> bool "
                "(e.g. shapetrace.maps.AttentionStore)"
            )
        wants = getattr(probe, "wants", None)
        if wants is not None and not callable(wants):
            raise ShapeTraceError(f"probe #{i} ({type(probe).__name__}): wants is not callable")
    return checked


def _check_grids(grids: Iterable[Any]) -> tuple[Grid, ...]:
    out = []
    for g in grids:
        if not (
            isinstance(g, Sequence) and len(g) == 2 and all(isinstance(x, int) and x > 0 for x in g)
        ):
            raise ShapeTraceError(f"grids takes (h, w) pairs of positive ints, got {g!r}")
        out.append(Grid(int(g[0]), int(g[1]), "given by the caller"))
    return tuple(out)


class Tracer:
    """The context manager behind :func:`trace`; its ``journey`` fills as layers run."""

    def __init__(
        self,
        module: nn.Module,
        *,
        monitors: bool = True,
        probes: Iterable[Probe] = (),
        strict: bool = True,
        grids: Iterable[tuple[int, int]] = (),
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ShapeTraceError(
                f"trace() takes an nn.Module, got {type(module).__name__}; pass the model "
                "(e.g. pipe.unet), not its output."
            )
        self.module = module
        self.monitors = bool(monitors)
        self.probes = _check_probes(probes)
        self.strict = strict
        self.grids = _check_grids(grids)
        self.journey = Journey(model=type(module).__name__)
        self.layers: list[LayerInfo] = []
        self._session = Session(monitors=self.monitors)
        self._recorder = Recorder(self._session)
        self._handles: list[RemovableHandle] = []
        self._geometry: list[Grid | None] = []
        self._patches: list[Grid] = []
        self._counts: dict[str, int] = {}
        self._failed: CallState | None = None
        self._thread: int | None = None
        self._used = False
        self._warnings: Any = None

    # -- the context ---------------------------------------------------------------------
    def __enter__(self) -> Journey:
        if self._used:
            raise ShapeTraceError(
                "this Tracer was already used for a `with` block; its journey is complete. "
                "Start a new one with shapetrace.trace(model)."
            )
        self._used = True
        found = discover(self.module)
        self.layers = list(found.layers)
        if not self.layers:
            n = sum(1 for _ in self.module.modules())
            raise NoAttentionLayersError(
                f"{type(self.module).__name__} holds no attention layer shapetrace can hook "
                f"(searched {n} modules for diffusers Attention, nn.MultiheadAttention, modules "
                "with q/k/v or fused qkv projections, and modules named *Attention with a "
                "Linear). Pass the model that contains them (e.g. pipe.unet)."
            )
        self._thread = threading.get_ident()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=_SILENCED)
        try:
            self._install(found)
        except BaseException:
            self._remove()
            raise
        return self.journey

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        failed = self._failed or self._session.top()
        self._remove()
        if exc is not None:
            if isinstance(exc, Exception) and not isinstance(exc, ShapeTraceError) and failed:
                _add_note(
                    exc,
                    f"shapetrace: raised inside attention layer {failed.info.name!r} "
                    f"({failed.info.module_type}) after stages {_describe(failed)}",
                )
            return
        if self.strict and not self.journey.layers and not self.journey.not_understood:
            skipped = "".join(
                f"; {n} {why.replace('_', ' ')} left out" for why, n in self.journey.skipped.items()
            )
            raise NoAttentionLayersError(
                f"the traced block ran none of the {len(self.layers)} attention layers of "
                f"{type(self.module).__name__} (first: {self.layers[0].name!r}){skipped}; call "
                "the model inside the `with shapetrace.trace(model)` block, on this thread."
            )

    def _install(self, found: Discovered) -> None:
        for info in found.layers:
            self._hook_layer(info)
        for module in found.blocks:
            self._hook_block(module)
        for module in found.ancestors:
            self._hook_geometry(module)
        for module in found.patches:
            self._handles.append(module.register_forward_pre_hook(self._patch_pre))
        self._handles.append(
            self.module.register_forward_pre_hook(
                lambda m, a, k: validate_unet(m, a, k) if self._ours() else None,
                with_kwargs=True,
                prepend=True,
            )
        )

    def _remove(self) -> None:
        try:
            while self._session.depth > 0:  # an interrupt skipped the hooks that pop the mode
                self._session.depth -= 1
                with contextlib.suppress(Exception):  # a foreign mode on top of ours
                    self._recorder.__exit__(None, None, None)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._session.calls.clear()
            self._session.table.clear()
            self._geometry.clear()
            if self._warnings is not None:
                self._warnings.__exit__(None, None, None)
                self._warnings = None

    # -- which calls are ours ------------------------------------------------------------
    def _ours(self, count: bool = False) -> bool:
        """Calls from this thread's forward, not from another thread nor a recompute that
        gradient checkpointing runs during backward."""
        if threading.get_ident() != self._thread:
            why = "other_threads"
        elif torch._C._current_graph_task_id() != -1:
            why = "recomputes"
        else:
            return True
        if count:
            self.journey.skipped[why] = self.journey.skipped.get(why, 0) + 1
        return False

    def _enter_scope(self) -> None:
        if self._session.depth == 0:
            self._recorder.__enter__()
        self._session.depth += 1

    def _exit_scope(self) -> None:
        if self._session.depth > 0:
            self._session.depth -= 1
            if self._session.depth == 0:
                self._recorder.__exit__(None, None, None)
                self._session.table.clear()

    # -- hooks ---------------------------------------------------------------------------
    def _hook_geometry(self, module: nn.Module) -> None:
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._ours():
                self._geometry.append(grid_of_input(args, kwargs))

        def post(_m: nn.Module, _a: Any, _k: Any, _out: Any) -> None:
            if self._ours() and self._geometry:
                self._geometry.pop()

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))

    def _patch_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        grid = grid_of_patches(module, args) if self._ours() else None
        if grid is not None:
            self._patches.append(grid)

    def _grids(self) -> tuple[Grid, ...]:
        inner = tuple(g for g in reversed(self._geometry) if g is not None)
        return (*inner, *reversed(self._patches), *self.grids)

    def _hook_block(self, module: nn.Module) -> None:
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._ours():
                self._enter_scope()
                tag_inputs(self._session.table, *layer_inputs(args, kwargs))

        def post(_m: nn.Module, _a: Any, _k: Any, _out: Any) -> None:
            if self._ours():
                self._exit_scope()

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))

    def _hook_layer(self, info: LayerInfo) -> None:
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._ours(count=True):
                self._begin(info, args, kwargs)

        def post(_m: nn.Module, _a: Any, _k: Any, out: Any) -> None:
            if self._ours():
                self._end(info, out)

        self._handles.append(info.module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(
            info.module.register_forward_hook(post, with_kwargs=True, always_call=True)
        )

    def _begin(self, info: LayerInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden, context, ip = layer_inputs(args, kwargs)
        x = hidden if hidden is not None else first_tensor(args, kwargs)
        if x is None:
            return
        if info.family != "mha":
            validate_call(info, x, (context, ip) if ip else context)
        state = CallState(
            info=info,
            call=self._counts.get(info.name, 0),
            batch=int(x.shape[0]) if x.dim() > 1 else 1,
            geometry=self._grids(),
            dtype=str(x.dtype).replace("torch.", ""),
            device=x.device.type,
            input_4d=x.dim() == 4,
        )
        if info.family == "mha":
            mha_pre(state, args, kwargs)
        else:
            state.weight_names = info.weight_names()
            state.add("input", tuple(x.shape), op="layer input")
            if x.dim() == 4:
                state.add("feature_map", tuple(x.shape), op="layer input")
            if context is not None:
                state.add("context", tuple(context.shape), op="encoder hidden states")
            values = x.device.type != "meta" and x.is_floating_point()
            if self.monitors and values and not _monitors.all_finite(x):
                state.checks.append(_monitors.Check("finite_input", False, "input has NaN or inf"))
        self._session.calls.append(state)
        self._enter_scope()
        tag_inputs(self._session.table, x, context, ip)

    def _end(self, info: LayerInfo, out: Any) -> None:
        state = self._session.top()
        if state is None or state.info is not info:
            return
        self._session.calls.pop()
        self._counts[info.name] = state.call + 1
        try:
            if out is None:  # the forward raised inside the layer
                self._failed = state
                return
            with torch._C.DisableTorchFunction():
                self._finish(state, out)
            tag_outputs(self._session.table, out, state)
        finally:
            self._exit_scope()

    def _finish(self, state: CallState, out: Any) -> None:
        info = state.info
        outputs = [
            t
            for t in (out if isinstance(out, (tuple, list)) else (out,))
            if isinstance(t, torch.Tensor)
        ]
        if info.family == "mha":
            mha_post(state, out)
        elif outputs:
            state.add("output", tuple(outputs[0].shape), op="layer output")
            if len(outputs) == 2 and outputs[1].dim() == 3:
                state.add("context_output", tuple(outputs[1].shape), op="layer output (text)")
        reason = state.understood()
        if reason is not None:
            if all(n.name != info.name for n in self.journey.not_understood):
                self.journey.not_understood.append(
                    NotUnderstood(info.name, info.module_type, reason)
                )
            return
        record = state.record(info.name)
        if self.monitors:
            _monitors.final_checks(state, record, out)
        self.journey.layers.append(record)
        if self.probes:
            fire_probes(self.probes, state, record)


def _add_note(exc: BaseException, note: str) -> None:
    """The layer's context on the user's own exception (its type unchanged)."""
    add = getattr(exc, "add_note", None)
    if callable(add):
        add(note)
    else:  # Python 3.10: no add_note; keep the note where 3.11 would
        setattr(exc, "__notes__", [*getattr(exc, "__notes__", []), note])  # noqa: B010


def _describe(state: CallState) -> str:
    stages = {**state.stages, **{n: s for b in state.branches for n, s in b.stages.items()}}
    seen = ", ".join(f"{n} {s.shape}" for n, s in stages.items()) or "(none)"
    projections = ", ".join(f"{p.name} {p.shape}" for p in state.projections.values())
    return f"{seen}; projections run: {projections}" if projections else seen


def trace(
    module: nn.Module,
    *,
    monitors: bool = True,
    probes: Iterable[Probe] = (),
    strict: bool = True,
    grids: Iterable[tuple[int, int]] = (),
) -> Tracer:
    """Record the dimension journey of every attention call made inside the block.

    >>> with shapetrace.trace(unet) as journey:                       # doctest: +SKIP
    ...     unet(latents, t, encoder_hidden_states=context)
    >>> layer = journey.cross[0]                                      # doctest: +SKIP
    >>> layer.shape("feature_map"), layer.shape("scores")             # doctest: +SKIP
    ((1, 320, 64, 64), (1, 8, 4096, 77))

    ``monitors`` checks the softmax axis, row sums, heads x head_dim and the scale while it
    runs; ``probes`` receive each call's q and k heads (see ``AttentionCall``). ``grids``
    names token grids the caller knows (e.g. Flux's packed latent on ``meta``). Every hook is
    removed when the block ends, also when the forward raises (the exception keeps its type,
    with a note naming the layer); with ``strict`` a block that ran no attention layer raises
    ``NoAttentionLayersError``. Calls from other threads, and forwards that gradient
    checkpointing re-runs during backward, are left out and counted in ``journey.skipped``.
    """
    return Tracer(module, monitors=monitors, probes=probes, strict=strict, grids=grids)
