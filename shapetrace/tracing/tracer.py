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

from shapetrace.errors import NoAttentionLayersError, ShapeTraceError
from shapetrace.journey import Journey
from shapetrace.tracing._call import CallState
from shapetrace.tracing._compiled import compiled_original
from shapetrace.tracing._discover import Discovered, LayerInfo, discover
from shapetrace.tracing._geometry import Grid, grid_of_input, grid_of_patches
from shapetrace.tracing._hooks import CallHooks, FastCall
from shapetrace.tracing._memory import memory_of
from shapetrace.tracing._probe import Probe
from shapetrace.tracing._recorder import Recorder, Session
from shapetrace.tracing._validate import validate_unet
from shapetrace.tracing._wrap import Removable, watch

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
        pair = isinstance(g, Sequence) and len(g) == 2
        if not pair or not all(isinstance(x, int) and x > 0 for x in g):
            raise ShapeTraceError(f"grids takes (h, w) pairs of positive ints, got {g!r}")
        out.append(Grid(int(g[0]), int(g[1]), "given by the caller"))
    return tuple(out)


def _check_every(monitor_every: object) -> int | None:
    if monitor_every is None:
        return None
    if isinstance(monitor_every, bool) or not isinstance(monitor_every, int) or monitor_every < 1:
        raise ShapeTraceError(
            f"monitor_every={monitor_every!r}: give a whole number >= 1 (1 checks every call, "
            "k the first and every k-th call of each input signature), or None"
        )
    return monitor_every


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
        every_call: bool = False,
        monitor_every: int | None = None,
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
        self.every_call = bool(every_call)
        self.monitor_every = _check_every(monitor_every)
        self.journey = Journey(model=type(module).__name__)
        self.layers: list[LayerInfo] = []
        self._session = Session(monitors=self.monitors)
        self._recorder = Recorder(self._session)
        self._handles: list[Removable] = []
        self._geometry: list[Grid | None] = []
        self._patches: list[Grid] = []
        self._captured: set[int] = set()
        self._hooks: CallHooks | None = None
        self._found: Discovered | None = None
        self._mode = ""  # "", "light" or "full": which layer hooks are in
        self._root: nn.Module | None = None
        self._light: list[Removable] = []
        self._thread: int | None = None
        self._used = False
        self._warnings: Any = None

    # -- the context ---------------------------------------------------------------------
    def __enter__(self) -> Journey:
        if self._used:
            raise ShapeTraceError(
                "this Tracer was already used for a `with` block and is not entered again: its "
                "journey is complete. Start a new one with shapetrace.trace(model)."
            )
        self._used = True
        compiled = compiled_original(self.module)
        if compiled is not None and self.probes:
            raise ShapeTraceError(
                "probes need every attention call, which a torch.compile'd model runs inside "
                "its compiled graph: capture with the original module "
                "(trace(model._orig_mod, probes=...)) and compile for the runs without capture"
            )
        target = compiled if compiled is not None else self.module
        found = discover(target)
        self.layers = list(found.layers)
        if not self.layers:
            n = sum(1 for _ in target.modules())
            raise NoAttentionLayersError(
                f"{type(target).__name__} holds no attention layer shapetrace can hook "
                f"(searched {n} modules for diffusers Attention, nn.MultiheadAttention, modules "
                "with q/k/v or fused qkv projections, and modules named *Attention with a "
                "Linear). Pass the model that contains them (e.g. pipe.unet)."
            )
        self._thread = threading.get_ident()
        self._hooks = CallHooks(
            self.journey,
            self._session,
            memory_of(target, found.generation, self.monitors),
            probes=self.probes,
            every_call=self.every_call,
            monitor_every=self.monitor_every,
            scope=(self._enter_scope, self._exit_scope),
            grids=self._grids,
            hook_capture=self._hook_capture,
        )
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=_SILENCED)
        try:
            if compiled is not None:
                self._install_compiled(compiled, found)
            else:
                self._install(found)
        except BaseException:
            self._remove()
            raise
        return self.journey

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        hooks = self._hooks
        failed = (hooks.failed or self._session.top()) if hooks is not None else None
        self._remove()
        if hooks is not None and exc is None:
            hooks.resolve()
            hooks.forward_ended()
        elif hooks is not None:
            hooks.finite.discard()  # the journey of a failed block reads no values
        if exc is not None:
            if isinstance(exc, Exception) and not isinstance(exc, ShapeTraceError) and failed:
                _add_note(exc, f"shapetrace: raised inside attention layer {failed.info.name!r} "
                          f"({failed.info.module_type}) after {_describe(failed)}")
            return
        ran = self.journey.layers or self.journey.not_understood
        if self.strict and not ran and not self.journey.skipped.get("unrecorded"):
            skipped = "".join(f"; {n} {why.replace('_', ' ')} left out" for why, n in
                              self.journey.skipped.items())
            raise NoAttentionLayersError(
                f"the traced block ran none of the {len(self.layers)} attention layers of "
                f"{type(self.module).__name__} (first: {self.layers[0].name!r}){skipped}; call "
                "the model inside the `with shapetrace.trace(model)` block, on this thread."
            )

    def _install(self, found: Discovered, *, root: nn.Module | None = None) -> None:
        """The model's own hooks now; the layers' when its first call shows which it needs
        (see ``_ensure``). A model that is itself one attention layer gets them all now."""
        hooks = self._hooks
        assert hooks is not None
        root = self.module if root is None else root
        self._found, self._mode, self._root = found, "", root
        hooks.layer_infos = found.layers
        hooks.ensure = self._ensure
        for module, inside in found.blocks:
            hooks.block_layers[id(module)] = inside
        if any(info.path == "" for info in found.layers):
            self._ensure("full")  # the model is one attention layer: nothing to save
            return
        # hooks on the model itself go in now: none may be added while its own run
        if any(module is root for module in found.ancestors):
            self._hook_geometry(root)
        if any(module is root for module, _inside in found.blocks):
            self._hook_block(root)

        def root_pre(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._ours():
                validate_unet(m, args, kwargs)
                hooks.root_pre(m, args, kwargs)

        def root_post(_m: nn.Module, _a: Any, out: Any) -> None:
            if self._ours():
                hooks.root_post(failed=out is None)

        self._handles.append(root.register_forward_pre_hook(root_pre, with_kwargs=True,
                                                            prepend=True))
        self._handles.append(root.register_forward_hook(root_post, always_call=True))

    def _ensure(self, mode: str) -> None:
        """Hooks for what the model's call needs: ``light`` (a known signature replayed: each
        layer's wrapped forward, or its post-hook, counts the call, checks finiteness and
        feeds probes; see ``_wrap``) or ``full`` (recording: layers, blocks, grid sources)."""
        found = self._found
        if found is None or self._mode == "full" or self._mode == mode:
            return
        for handle in self._light:
            handle.remove()
        self._light.clear()
        if mode == "light":
            for info in found.layers:
                self._light.append(watch(info.module, self._light_post(info), always=True,
                                         hook=info.family == "mha"))
            self._mode = "light"
            return
        root = self._root
        for info in found.layers:
            self._hook_layer(info)
        for module, _inside in found.blocks:
            if module is not root:
                self._hook_block(module)
        for module in found.ancestors:
            if module is not root:
                self._hook_geometry(module)
        for module in found.patches:
            self._handles.append(module.register_forward_pre_hook(self._patch_pre))
        self._mode = "full"

    def _light_post(self, info: LayerInfo) -> Any:
        hooks = self._hooks
        assert hooks is not None

        def post(out: Any, final: bool) -> None:
            if self._ours(count=True):
                hooks.light_end(info, out, final)

        return post

    def _install_compiled(self, original: nn.Module, found: Discovered) -> None:
        """A compiled model keeps its graph: hooks go on the original module only while an
        eager shadow forward records a new signature (see ``_compiled``)."""
        from shapetrace.tracing._compiled import shadow_hook

        self._handles.append(
            self.module.register_forward_pre_hook(
                shadow_hook(self, original, found), with_kwargs=True
            )
        )

    def _remove(self) -> None:
        try:
            while self._session.depth > 0:  # an interrupt skipped the hooks that pop the mode
                self._session.depth -= 1
                with contextlib.suppress(Exception):  # a foreign mode on top of ours
                    self._recorder.__exit__(None, None, None)
        finally:
            for handle in (*self._handles, *self._light):  # in any order (see _wrap)
                handle.remove()
            self._handles.clear()
            self._light.clear()
            self._mode = ""
            self._captured.clear()
            self._session.calls.clear()
            self._session.table.clear()
            self._geometry.clear()
            if self._hooks is not None:
                self._hooks.frames.clear()
            self._hooks = None  # it holds this tracer's methods: no cycle left for the GC
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

        def post(_m: nn.Module, _a: Any, _out: Any) -> None:
            if self._ours() and self._geometry:
                self._geometry.pop()

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, always_call=True))

    def _patch_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        grid = grid_of_patches(module, args) if self._ours() else None
        if grid is not None and (not self._patches or self._patches[-1] != grid):
            self._patches.append(grid)

    def _grids(self) -> tuple[Grid, ...]:
        inner = tuple(g for g in reversed(self._geometry) if g is not None)
        return (*inner, *reversed(self._patches[-4:]), *self.grids)

    def _hook_block(self, module: nn.Module) -> None:
        hooks = self._hooks
        assert hooks is not None

        def pre(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._ours():
                hooks.block_pre(m, args, kwargs)

        def post(_m: nn.Module, _a: Any, _out: Any) -> None:
            if self._ours():
                hooks.block_post()

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, always_call=True))

    def _hook_layer(self, info: LayerInfo) -> None:
        hooks = self._hooks
        assert hooks is not None

        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._ours(count=True):
                hooks.begin(info, args, kwargs)

        def post(_m: nn.Module, _a: Any, out: Any) -> None:
            if self._ours():
                hooks.end(info, out)

        self._handles.append(info.module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(info.module.register_forward_hook(post, always_call=True))

    def _hook_capture(self, module: nn.Module) -> None:
        """Keep a projection's output for fast calls whose probes need it (hooked once)."""
        if id(module) in self._captured:
            return
        self._captured.add(id(module))
        hooks = self._hooks
        assert hooks is not None
        self._handles.append(
            watch(module, lambda out, final: hooks.capture(module, out, final), always=False)
        )


def _add_note(exc: BaseException, note: str) -> None:
    """The layer's context on the user's own exception (its type unchanged)."""
    add = getattr(exc, "add_note", None)
    if callable(add):
        add(note)
    else:  # Python 3.10: no add_note; keep the note where 3.11 would
        setattr(exc, "__notes__", [*getattr(exc, "__notes__", []), note])  # noqa: B010


def _describe(frame: CallState | FastCall) -> str:
    if isinstance(frame, FastCall):
        record = frame.learned.record
        known = ", ".join(f"{s.name} {s.shape}" for s in record.stages) if record else "(none)"
        return f"stages {known} (a call of an input signature recorded before)"
    stages = {**frame.stages, **{n: s for b in frame.branches for n, s in b.stages.items()}}
    seen = ", ".join(f"{n} {s.shape}" for n, s in stages.items()) or "(none)"
    projections = ", ".join(f"{p.name} {p.shape}" for p in frame.projections.values())
    text = f"stages {seen}"
    return f"{text}; projections run: {projections}" if projections else text


def trace(
    module: nn.Module,
    *,
    monitors: bool = True,
    probes: Iterable[Probe] = (),
    strict: bool = True,
    grids: Iterable[tuple[int, int]] = (),
    every_call: bool = False,
    monitor_every: int | None = None,
) -> Tracer:
    """Record the dimension journey of every attention call made inside the block.

    >>> with shapetrace.trace(unet) as journey:                       # doctest: +SKIP
    ...     unet(latents, t, encoder_hidden_states=context)
    >>> layer = journey.cross[0]                                      # doctest: +SKIP
    >>> layer.shape("feature_map"), layer.shape("scores")             # doctest: +SKIP
    ((1, 320, 64, 64), (1, 8, 4096, 77))

    A layer's journey depends only on its input signature (shapes, dtypes, devices, the
    processor, grad and autocast mode), so the first call of each signature is recorded op by
    op, and later calls, in this block or a later one on the same model, only count
    (``layer.calls``): a ``with`` around every denoising step costs little. ``every_call``
    records every call (one record each). ``monitors`` checks the softmax axis, row sums,
    heads x head_dim, the scale and finiteness on recorded calls; ``monitor_every=k`` records
    and checks the first and every k-th call of each signature in this block too (the report
    says how many calls were checked). ``probes`` receive every call's q and k heads (see
    ``AttentionCall``). ``grids`` names token grids the caller knows (e.g. Flux's packed latent
    on ``meta``). Every hook is removed when the block ends, also when the forward raises (the
    exception keeps its type, with a note naming the layer); with ``strict`` a block that ran
    no attention layer raises ``NoAttentionLayersError``. Calls from other threads, and
    forwards that gradient checkpointing re-runs during backward, are left out and counted in
    ``journey.skipped``. A ``torch.compile``'d model keeps its compiled graph: each new input
    signature is recorded once from an eager forward of the original module beside it.
    """
    return Tracer(
        module, monitors=monitors, probes=probes, strict=strict, grids=grids,
        every_call=every_call, monitor_every=monitor_every,
    )
