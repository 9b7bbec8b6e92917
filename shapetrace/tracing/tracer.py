"""``shapetrace.trace``: hooks on every attention layer, a recorder scoped to each call."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from shapetrace.errors import NoAttentionLayersError, ShapeTraceError, TraceError
from shapetrace.journey import Check, Journey
from shapetrace.tracing import _monitors
from shapetrace.tracing._call import CallState, Probe
from shapetrace.tracing._discover import LayerInfo, find_attention_layers, geometry_ancestors
from shapetrace.tracing._labels import Label
from shapetrace.tracing._mha import mha_post, mha_pre
from shapetrace.tracing._recorder import Recorder
from shapetrace.tracing._validate import validate_call, validate_unet

__all__ = ["Tracer", "trace"]

_INPUT_KWARGS = ("hidden_states", "x", "query", "sample")
_CONTEXT_KWARGS = ("encoder_hidden_states", "context")
_SILENCED = "module forward hook with ``always_call=True`` raised an exception"


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in _INPUT_KWARGS:
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    return None


def _context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for key in _CONTEXT_KWARGS:
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    if len(args) > 1 and isinstance(args[1], torch.Tensor):
        return args[1]
    return None


class Tracer:
    """The context manager behind :func:`trace`; its ``journey`` fills as layers run."""

    def __init__(
        self,
        module: nn.Module,
        *,
        monitors: bool = True,
        probes: Iterable[Probe] = (),
        strict: bool = True,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ShapeTraceError(
                f"trace() takes an nn.Module, got {type(module).__name__}; pass the model "
                "(e.g. pipe.unet), not its output."
            )
        self.module = module
        self.monitors = monitors
        self.probes = tuple(probes)
        self.strict = strict
        self.journey = Journey(model=type(module).__name__)
        self.layers: list[LayerInfo] = []
        self._handles: list[RemovableHandle] = []
        self._calls: list[CallState] = []
        self._recorders: list[Recorder] = []
        self._geometry: list[tuple[int, ...] | None] = []
        self._counts: dict[str, int] = {}
        self._failed: CallState | None = None
        self._warnings: Any = None

    # -- the context ---------------------------------------------------------------------
    def __enter__(self) -> Journey:
        self.layers = find_attention_layers(self.module)
        if not self.layers:
            n = sum(1 for _ in self.module.modules())
            raise NoAttentionLayersError(
                f"{type(self.module).__name__} holds no attention layer shapetrace can hook "
                f"(searched {n} modules for diffusers Attention, nn.MultiheadAttention and "
                "modules with to_q/to_k/to_v Linear layers and a to_out). Pass the model that "
                "contains them (e.g. pipe.unet), or give your module those projections."
            )
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=_SILENCED)
        try:
            for info in self.layers:
                self._hook_layer(info)
            for ancestor in geometry_ancestors(self.module, self.layers):
                self._hook_geometry(ancestor)
            self._handles.append(
                self.module.register_forward_pre_hook(
                    lambda m, a, k: validate_unet(m, a, k), with_kwargs=True, prepend=True
                )
            )
        except BaseException:
            self._remove()
            raise
        return self.journey

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        failed = self._failed or (self._calls[-1] if self._calls else None)
        self._remove()
        if exc is not None:
            if isinstance(exc, Exception) and not isinstance(exc, ShapeTraceError) and failed:
                raise TraceError(
                    f"the forward failed inside layer {failed.info.name!r} "
                    f"({failed.info.module_type}) after stages "
                    f"{_describe(failed)}: {type(exc).__name__}: {exc}"
                ) from exc
            return
        if self.strict and not self.journey.layers:
            raise NoAttentionLayersError(
                f"the traced block ran none of the {len(self.layers)} attention layers of "
                f"{type(self.module).__name__} (first: {self.layers[0].name!r}); call the "
                "model inside the `with shapetrace.trace(model)` block."
            )

    def _remove(self) -> None:
        try:
            while self._recorders:
                recorder = self._recorders.pop()
                with contextlib.suppress(Exception):  # a foreign mode on top of ours
                    recorder.__exit__(None, None, None)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._calls.clear()
            self._geometry.clear()
            if self._warnings is not None:
                self._warnings.__exit__(None, None, None)
                self._warnings = None

    # -- hooks ---------------------------------------------------------------------------
    def _top(self, info: LayerInfo) -> CallState | None:
        if self._calls and self._calls[-1].info is info:
            return self._calls[-1]
        return None

    def _hook_geometry(self, module: nn.Module) -> None:
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = _first_tensor(args, kwargs)
            self._geometry.append(tuple(x.shape) if x is not None and x.dim() == 4 else None)

        def post(_m: nn.Module, _a: Any, _k: Any, _out: Any) -> None:
            if self._geometry:
                self._geometry.pop()

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))

    def _hook_layer(self, info: LayerInfo) -> None:
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = _first_tensor(args, kwargs)
            if x is None:
                return
            state = CallState(
                info=info,
                call=self._counts.get(info.name, 0),
                probes=self.probes,
                monitors=self.monitors,
                geometry=next((g for g in reversed(self._geometry) if g is not None), None),
                dtype=str(x.dtype).replace("torch.", ""),
                device=x.device.type,
            )
            if info.family == "mha":
                mha_pre(state, info, args, kwargs)
            else:
                validate_call(info, x, _context(args, kwargs))
                state.add("input", tuple(x.shape), op="layer input")
                state.attach_geometry(tuple(x.shape))
                has_values = x.device.type != "meta" and x.is_floating_point()
                if self.monitors and has_values and not _monitors.all_finite(x):
                    state.checks.append(Check("finite_input", False, "input has NaN or inf"))
            self._calls.append(state)
            if info.family != "mha":
                recorder = Recorder(state)
                recorder.__enter__()
                self._recorders.append(recorder)

        def post(_m: nn.Module, _a: Any, _k: Any, out: Any) -> None:
            state = self._top(info)
            if state is None:
                return
            self._calls.pop()
            if info.family != "mha" and self._recorders:
                self._recorders.pop().__exit__(None, None, None)
            if out is None:
                self._failed = state
                return
            with torch._C.DisableTorchFunction():
                if info.family == "mha":
                    mha_post(state, out)
                else:
                    result = out[0] if isinstance(out, (tuple, list)) else out
                    if isinstance(result, torch.Tensor):
                        state.add("output", tuple(result.shape), op="layer output")
                    if state.pending_scores and "scores" not in state.stages:
                        shape, made_by = state.pending_scores
                        state.add_pair("scores", shape, made_by)
                if self.monitors:
                    _monitors.final_checks(state, out)
            self._counts[info.name] = state.call + 1
            self.journey.layers.append(state.finish())

        h = self._handles
        h.append(info.module.register_forward_pre_hook(pre, with_kwargs=True))
        h.append(info.module.register_forward_hook(post, with_kwargs=True, always_call=True))
        if info.family != "mha":
            self._hook_projections(info)

    def _hook_projections(self, info: LayerInfo) -> None:
        def linear_op(lin: nn.Linear, role: str) -> str:
            return f"linear {lin.in_features}→{lin.out_features} ({role})"

        def q_pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
            state = self._top(info)
            if state is not None and args and isinstance(args[0], torch.Tensor):
                state.q_in = args[0]
                if "input" in state.stages and len(state.stages["input"].shape) == 4:
                    flatten = "flatten (B, C, H, W) → (B, HW, C)"
                    state.add("tokens", tuple(args[0].shape), op=flatten)

        def k_pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
            state = self._top(info)
            if state is None or not args or not isinstance(args[0], torch.Tensor):
                return
            source = args[0]
            if state.kind is None:
                state.kind = "self" if source is state.q_in else "cross"
            if state.kind == "cross":
                state.add("context", tuple(source.shape), op="text embeddings")

        def out_pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
            state = self._top(info)
            if state is not None and args and isinstance(args[0], torch.Tensor):
                label = state.labels.get(args[0])
                chain = "→".join(label.ops) if label and label.ops else "merge heads"
                state.add("merged", tuple(args[0].shape), op=chain)

        def labeller(stage: str, role: str, lin: nn.Linear, attr: str) -> Any:
            def post(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
                state = self._top(info)
                if state is not None and isinstance(out, torch.Tensor):
                    state.add(stage, tuple(out.shape), op=linear_op(lin, attr))
                    state.labels.put(out, Label(role))

            return post

        h = self._handles
        for stage, role, lin, attr in (
            ("query", "q", info.to_q, "to_q"),
            ("key", "k", info.to_k, "to_k"),
            ("value", "v", info.to_v, "to_v"),
        ):
            if lin is not None:
                h.append(lin.register_forward_hook(labeller(stage, role, lin, attr)))
        if info.to_q is not None:
            h.append(info.to_q.register_forward_pre_hook(q_pre))
        if info.to_k is not None:
            h.append(info.to_k.register_forward_pre_hook(k_pre))
        if info.to_out is not None:
            h.append(info.to_out.register_forward_pre_hook(out_pre))


def _describe(state: CallState) -> str:
    if not state.stages:
        return "(none)"
    return ", ".join(f"{n} {tuple(s.shape)}" for n, s in state.stages.items())


def trace(
    module: nn.Module,
    *,
    monitors: bool = True,
    probes: Iterable[Probe] = (),
    strict: bool = True,
) -> Tracer:
    """Record the dimension journey of every attention call made inside the block.

    >>> with shapetrace.trace(unet) as journey:                       # doctest: +SKIP
    ...     unet(latents, t, encoder_hidden_states=context)
    >>> layer = journey.cross[0]                                      # doctest: +SKIP
    >>> layer.shape("feature_map"), layer.shape("scores")             # doctest: +SKIP
    ((1, 320, 64, 64), (1, 8, 4096, 77))

    ``monitors`` checks the softmax axis, row sums, heads x head_dim and the scale while it
    runs; ``probes`` receive each call's q and k heads (see ``AttentionCall``). Every hook is
    removed when the block ends, also when the forward raises; with ``strict`` a block that
    ran no attention layer raises ``NoAttentionLayersError``.
    """
    return Tracer(module, monitors=monitors, probes=probes, strict=strict)
