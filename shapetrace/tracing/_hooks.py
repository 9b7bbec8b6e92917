"""What happens at each hooked call: a block or layer decides whether to record op by op or to
run fast, and a finished call becomes (or counts towards) a record of the journey.

The stack of frames mirrors the calls in progress. A block records when its signature is new,
when a monitor sample is due, with ``every_call``, or when probes want a layer inside that has
no plan; the layers inside a recording block record too. Otherwise a layer of a known signature
runs fast: no recorder, no validation (its signature passed it before), a count, and for probes
q and k rebuilt from its projections' outputs through the learned plan.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from shapetrace.journey import Journey, LayerRecord, NotUnderstood
from shapetrace.stages import Check
from shapetrace.tracing import _monitors
from shapetrace.tracing._call import CallState
from shapetrace.tracing._discover import LayerInfo
from shapetrace.tracing._finite import FiniteChecks
from shapetrace.tracing._fire import fire_planned, fire_probes, missed_off_path, probe_wants
from shapetrace.tracing._geometry import Grid, first_tensor
from shapetrace.tracing._inputs import layer_inputs, tag_inputs, tag_outputs
from shapetrace.tracing._journal import Journal
from shapetrace.tracing._memory import Learned, ModelMemory
from shapetrace.tracing._mha import mha_post, mha_pre
from shapetrace.tracing._plan import Plan, learn_plan
from shapetrace.tracing._probe import Probe
from shapetrace.tracing._recorder import Session
from shapetrace.tracing._signature import signature
from shapetrace.tracing._validate import validate_call

__all__ = ["BlockFrame", "CallHooks", "FastCall"]


@dataclass
class BlockFrame:
    key: tuple[int, Hashable]
    full: bool
    plans: list[bool] = field(default_factory=list)


@dataclass
class FastCall:
    info: LayerInfo
    key: tuple[str, Hashable]
    learned: Learned
    call: int
    captures: dict[int, torch.Tensor | None] = field(default_factory=dict)


def model_signature(
    layers: Sequence[LayerInfo], args: tuple[Any, ...], kwargs: dict[str, Any], training: bool
) -> Hashable:
    """The key of a whole model call: its inputs' signature and every layer's processor."""
    processors = tuple(id(getattr(i.module, "processor", None)) for i in layers)
    return signature(args, kwargs, processors, training)


Frame = BlockFrame | CallState | FastCall | None


class CallHooks:
    """The per-call side of a tracer: frames, decisions, records."""

    def __init__(
        self,
        journey: Journey,
        session: Session,
        memory: ModelMemory,
        *,
        probes: Sequence[Probe],
        every_call: bool,
        monitor_every: int | None,
        scope: tuple[Callable[[], None], Callable[[], None]],
        grids: Callable[[], tuple[Grid, ...]],
        hook_capture: Callable[[nn.Module], None],
    ) -> None:
        self.journey, self.session, self.memory = journey, session, memory
        self.probes, self.every_call, self.monitor_every = probes, every_call, monitor_every
        self.enter_scope, self.exit_scope = scope
        self.grids, self.hook_capture = grids, hook_capture
        self.journal = Journal(journey, every_call=every_call)
        self.frames: list[Frame] = []
        self.counts: dict[str, int] = {}
        self.seen: dict[Hashable, int] = {}  # calls per signature key in this trace
        self.wanted: dict[Hashable, tuple[Probe, ...]] = {}  # key -> the probes that want it
        self.block_layers: dict[int, tuple[LayerInfo, ...]] = {}
        self.failed: CallState | FastCall | None = None
        self.finite = FiniteChecks()
        self.root_depth = 0
        self.root_key: Hashable | None = None
        self.replay: tuple[tuple[str, Hashable, Learned], ...] | None = None
        self.step = 0
        self.observed: list[tuple[str, Hashable]] | None = None
        self.loose: dict[int, torch.Tensor | None] = {}  # outputs kept during a light replay
        self.layer_infos: tuple[LayerInfo, ...] = ()
        self.ensure: Callable[[str], None] = lambda _mode: None

    # -- decisions -----------------------------------------------------------------------
    def _sample_due(self, key: Hashable) -> bool:
        n = self.seen[key] = self.seen.get(key, 0) + 1
        return self.monitor_every is not None and (n - 1) % self.monitor_every == 0

    def _wanting(self, key: Hashable, record: LayerRecord) -> tuple[Probe, ...]:
        """The probes that want this layer at this signature (asked once per trace)."""
        wanting = self.wanted.get(key)
        if wanting is None:
            wanting = self.wanted[key] = tuple(p for p in self.probes if probe_wants(p, record))
        return wanting

    def _wants(self, key: Hashable, record: LayerRecord) -> bool:
        return bool(self._wanting(key, record))

    def _block(self) -> BlockFrame | None:
        return next((f for f in reversed(self.frames) if isinstance(f, BlockFrame)), None)

    def _pop(self, kind: type | tuple[type, ...]) -> Any:
        if self.frames and (self.frames[-1] is None or isinstance(self.frames[-1], kind)):
            return self.frames.pop()
        for i in range(len(self.frames) - 1, -1, -1):  # an interrupt left frames above it
            if isinstance(self.frames[i], kind):
                return self.frames.pop(i)
        return None

    # -- the model's own call ----------------------------------------------------------------
    def root_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A model call whose signature was seen replays its attention calls' keys in order,
        computing no signature per block or layer (until one does not match)."""
        self.root_depth += 1
        if self.root_depth > 1:
            return
        self.root_key = model_signature(self.layer_infos, args, kwargs, module.training)
        known = self.memory.roots.get(self.root_key)
        usable = known is not None and not self.every_call and self.monitor_every is None
        if usable and self.probes:
            usable = not any(self._needs_recorder(key, learned) for _p, key, learned in known or ())
        self.replay, self.step = (known if usable else None), 0
        self.observed = None if known is not None else []  # a known path is not learned again
        self.loose.clear()
        self.ensure("full" if self.replay is None else "light")
        if self.replay is not None and self.probes:
            self._hook_planned(self.replay)

    def _hook_planned(self, replay: tuple[tuple[str, Hashable, Learned], ...]) -> None:
        """Capture hooks on the q and k projections of the layers the probes want, so the
        light replay gives them q and k through each layer's plan."""
        for _path, key, learned in replay:
            self._capture_plan(key, learned)

    def _capture_plan(self, key: Hashable, learned: Learned) -> None:
        """Capture hooks on the q and k projections of a known layer the probes want."""
        plan, record = learned.plan, learned.record
        if plan is not None and record is not None and self.probes and self._wants(key, record):
            for side in (plan.q, plan.k):
                module = side.module()
                if module is not None:
                    self.hook_capture(module)

    def root_post(self, *, failed: bool = False) -> None:
        self.root_depth = max(self.root_depth - 1, 0)
        if self.root_depth == 0 and self.observed is not None and self.root_key is not None:
            if not failed and self.root_key not in self.memory.roots:  # a whole call only
                layers = self.memory.layers
                steps = [(path, key, layers[key]) for path, key in self.observed if key in layers]
                if len(steps) == len(self.observed):  # every call of it was understood
                    self.memory.roots[self.root_key] = tuple(steps)
            self.replay = self.observed = self.root_key = None
            self.loose.clear()
            if not failed:
                self.forward_ended()

    def forward_ended(self) -> None:
        """Tell the probes that have ``on_forward_end`` that the model's call (or the trace)
        ended: a store sums the calls it deferred."""
        for probe in self.probes:
            end = getattr(probe, "on_forward_end", None)
            if callable(end):
                end()

    def _replayed(self, info: LayerInfo) -> tuple[Hashable, Learned] | None:
        """The next known call, if it is this layer's."""
        replay = self.replay
        if replay is None:
            return None
        if self.step < len(replay) and replay[self.step][0] == info.path:
            _path, key, learned = replay[self.step]
            self.step += 1
            return key, learned
        self.replay = None  # the model took another path: compute signatures from here on
        return None

    # -- blocks --------------------------------------------------------------------------
    def block_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.replay is not None:
            self.frames.append(BlockFrame((id(module), None), False))
            return
        layers = self.block_layers.get(id(module), ())
        processors = tuple(id(getattr(i.module, "processor", None)) for i in layers)
        key = (id(module), signature(args, kwargs, processors, module.training))
        plans_ok = self.memory.blocks.get(key)
        sampled = self._sample_due(key)
        full = (
            self.every_call or plans_ok is None or sampled or (bool(self.probes) and not plans_ok)
        )
        self.frames.append(BlockFrame(key, full))
        if full:
            self.enter_scope()
            tag_inputs(self.session.table, *layer_inputs(args, kwargs))

    def block_post(self) -> None:
        frame = self._pop(BlockFrame)
        if isinstance(frame, BlockFrame) and frame.full:
            self.memory.blocks[frame.key] = all(frame.plans)
            self.exit_scope()

    # -- layers --------------------------------------------------------------------------
    def begin(self, info: LayerInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        replayed = self._replayed(info)
        if replayed is not None:
            known_key, known = replayed
            call = self.counts.get(info.name, 0)
            self.counts[info.name] = call + 1
            if self.observed is not None:
                self.observed.append((info.path, known_key))
            self._fast(info, known_key, known, call)
            return
        hidden, context, ip = layer_inputs(args, kwargs)
        x = hidden if hidden is not None else first_tensor(args, kwargs)
        if x is None:
            self.frames.append(None)
            return
        grids = self.grids()
        processor = id(getattr(info.module, "processor", None))
        key = (info.path, signature(args, kwargs, processor, info.module.training, grids))
        call = self.counts.get(info.name, 0)
        self.counts[info.name] = call + 1
        learned = self.memory.layers.get(key)
        if self.observed is not None:
            self.observed.append((info.path, key))
        parent = self._block()
        if parent is not None:
            full = parent.full or learned is None
        else:
            sampled = self._sample_due(key)
            full = self.every_call or learned is None or sampled
            full = full or (learned is not None and self._needs_recorder(key, learned))
        if not full and learned is not None:
            self._fast(info, key, learned, call)
            return
        self._begin_full(info, key, call, x, (context, ip), grids, args, kwargs)

    def _fast(self, info: LayerInfo, key: Hashable, learned: Learned, call: int) -> None:
        self.frames.append(FastCall(info, key, learned, call))  # type: ignore[arg-type]
        self._capture_plan(key, learned)

    def _needs_recorder(self, key: Hashable, learned: Learned) -> bool:
        """Probes want this layer and no plan gives them q and k without the recorder."""
        if not self.probes or learned.record is None:
            return False
        return learned.plan is None and self._wants(key, learned.record)

    def _begin_full(self, info, key, call, x, inputs, grids, args, kwargs) -> None:
        context, ip = inputs
        if info.family != "mha":
            validate_call(info, x, (context, ip) if ip else context)
        state = CallState(
            info=info,
            call=call,
            batch=int(x.shape[0]) if x.dim() > 1 else 1,
            geometry=grids,
            dtype=str(x.dtype).replace("torch.", ""),
            device=x.device.type,
            input_4d=x.dim() == 4,
        )
        state.key = key
        if info.family == "mha":
            mha_pre(state, args, kwargs)
        else:
            state.weight_names, state.weight_modules = info.weights()
            state.add("input", tuple(x.shape), op="layer input")
            if x.dim() == 4:
                state.add("feature_map", tuple(x.shape), op="layer input")
            if context is not None:
                state.add("context", tuple(context.shape), op="encoder hidden states")
            values = x.device.type != "meta" and x.is_floating_point()
            if self.session.monitors and values and not _monitors.all_finite(x):
                state.checks.append(Check("finite_input", False, "input has NaN or inf"))
        self.frames.append(state)
        self.session.calls.append(state)
        self.enter_scope()
        tag_inputs(self.session.table, x, context, ip)

    def end(self, info: LayerInfo, out: Any) -> None:
        frame = self._pop((CallState, FastCall))
        if frame is None or frame.info is not info:
            return
        if isinstance(frame, FastCall):
            if out is None:
                self.failed = frame
                return
            self._known_call(frame.key, frame.learned, frame.call, out, frame.captures)
            return
        if self.session.calls and self.session.calls[-1] is frame:
            self.session.calls.pop()
        try:
            if out is None:  # the forward raised inside the layer
                self.failed = frame
                return
            with torch._C.DisableTorchFunction():
                self._finish(frame, out)
            tag_outputs(self.session.table, out, frame)
        finally:
            self.exit_scope()

    def _finish(self, state: CallState, out: Any) -> None:
        info = state.info
        outputs = [t for t in (out if isinstance(out, (tuple, list)) else (out,))
                   if isinstance(t, torch.Tensor)]
        if info.family == "mha":
            mha_post(state, out)
        elif outputs:
            state.add("output", tuple(outputs[0].shape), op="layer output")
            if len(outputs) == 2 and outputs[1].dim() == 3:
                state.add("context_output", tuple(outputs[1].shape), op="layer output (text)")
        parent = self._block()
        reason = state.understood()
        if reason is not None:
            entry = NotUnderstood(info.name, info.module_type, reason)
            self.list_unread(entry)
            self.memory.layers.setdefault(state.key, Learned(None, None, entry))
            if parent is not None:
                parent.plans.append(True)  # probes get nothing from it either way
            return
        record = state.record(info.name)
        if self.session.monitors:
            _monitors.final_checks(state, record, out)
        plan: Plan | None = None
        known = self.memory.layers.get(state.key)
        if known is None:
            plan = learn_plan(state, record)
            template = replace(record, checks=list(record.checks))
            self.memory.layers[state.key] = Learned(template, plan)
        else:
            plan = known.plan
        if parent is not None:
            parent.plans.append(plan is not None)
        kept = self.journal.recorded(id(self.memory.layers[state.key]), record)
        if self.probes:
            fire_probes(self._wanting(state.key, kept), state, kept)
        for proj in state.projections.values():  # the outputs were kept for the plan only
            proj.output = None

    def resolve(self) -> None:
        """Read the finiteness sums of this trace into the checks."""
        self.finite.resolve()

    def light_end(self, info: LayerInfo, out: Any, final: bool = True) -> None:
        """A layer finished during a replayed model call (only its end is watched): count it,
        check its output on its first call in the trace (unless a forward hook added in the
        block may change it: not ``final``), feed the probes. A call off the known path
        cannot be recorded any more: it is counted as such, and the next model call gets
        every hook."""
        replay, step = self.replay, self.step
        if replay is None or step >= len(replay) or replay[step][0] != info.path:
            self.journey.skipped["unrecorded"] = self.journey.skipped.get("unrecorded", 0) + 1
            if self.root_key is not None:
                self.memory.roots.pop(self.root_key, None)
            self.replay = self.observed = None  # this call teaches no path either
            if self.probes:
                missed_off_path(self.probes, self.memory.layers, info)
            return
        self.step += 1
        _path, _key, learned = replay[step]
        call = self.counts.get(info.name, 0)
        self.counts[info.name] = call + 1
        if self.observed is not None:
            self.observed.append((info.path, _key))
        if out is None:  # the forward raised inside this layer
            self.failed = FastCall(info, _key, learned, call)  # type: ignore[arg-type]
            return
        self._known_call(_key, learned, call, out, self.loose, final)
        self.loose.clear()

    def _known_call(
        self, key: Hashable, learned: Learned, call: int, out: Any,
        captures: dict[int, torch.Tensor | None], final: bool = True,
    ) -> None:
        """A call of a known signature that ran without the recorder: counted towards its
        record, its output checked on its first call in the trace, and the probes that want
        it given q and k from the ``captures`` of its projections through the plan."""
        record = learned.record
        if record is None:
            self.list_unread(learned.unread)
            return
        kept = self.journal.repeated(id(learned), record, call)
        if kept.calls == 1 and self.session.monitors and final:
            self.finite.add(kept, out)
        if learned.plan is not None and self.probes:
            wanting = self._wanting(key, record)
            if wanting:
                fire_planned(wanting, learned.plan, captures, kept, call)

    def list_unread(self, entry: NotUnderstood | None) -> None:
        """List a layer that ran but was not understood, once per journey."""
        if entry is not None and all(n.name != entry.name for n in self.journey.not_understood):
            self.journey.not_understood.append(entry)

    def capture(self, module: nn.Module, out: Any, final: bool = True) -> None:
        """A projection ran: keep its output if a fast call's plan needs it (None when a
        forward hook added in the block may have replaced it: not ``final``)."""
        if not isinstance(out, torch.Tensor):
            return
        kept = out if final else None
        if not self.frames:
            if self.replay is not None:  # a light replay: the layer's end takes it
                self.loose[id(module)] = kept
            return
        top = self.frames[-1]
        if isinstance(top, FastCall):
            top.captures[id(module)] = kept
