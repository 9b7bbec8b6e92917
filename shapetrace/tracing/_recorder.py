"""A TorchFunctionMode over a traced block: it runs every op unchanged, follows the flows, and
reads attention off them: projections here, q kᵀ, softmax, probs times v and fused SDPA in
``_attention``.

Bookkeeping errors never break the model's forward: they become a failed ``recorder`` check on
the call instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from shapetrace.stages import Check, Segment
from shapetrace.tracing import _propagate as prop
from shapetrace.tracing._attention import PRODUCTS, SDPA, SOFTMAX, chain, product, sdpa, softmax
from shapetrace.tracing._call import CallState
from shapetrace.tracing._flow import Flow, FlowTable, Role, Source

__all__ = ["Recorder", "Session", "op_name"]

_IGNORED = frozenset(
    {
        "shape",
        "ndim",
        "dtype",
        "device",
        "size",
        "dim",
        "is_cuda",
        "numel",
        "stride",
        "is_contiguous",
        "element_size",
        "data_ptr",
        "is_floating_point",
        "__len__",
        "__bool__",
        "item",
        "tolist",
        "__format__",
        "__repr__",
        "requires_grad",
        "grad_fn",
        "is_leaf",
        "layout",
        "names",
        "__hash__",
        "__eq__",
        "_is_view",
        "is_meta",
        "get_device",
    }
)


def op_name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # property getters such as Tensor.mT
        name = getattr(getattr(func, "__self__", None), "__name__", "get")
    return str(name)


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


@dataclass
class Session:
    """What one trace shares across its hooks and its recorder on the tracing thread."""

    monitors: bool = True
    table: FlowTable = field(default_factory=FlowTable)
    calls: list[CallState] = field(default_factory=list)
    depth: int = 0  # hooked scopes entered: the mode is on while > 0

    def top(self) -> CallState | None:
        return self.calls[-1] if self.calls else None


class Recorder(TorchFunctionMode):
    """Follows flows through every op while a traced block or layer runs."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = op_name(func)
        if name in _IGNORED:
            return out
        try:
            self._observe(name, args, kwargs, out)
        except Exception as exc:  # reported on the call, never raised into the forward
            state = self.session.top()
            if state is not None:
                detail = f"could not follow op {name}: {type(exc).__name__}: {exc}"
                state.checks.append(Check("recorder", False, detail))
        return out

    # -- dispatch ------------------------------------------------------------------------
    def _put(self, pairs: list[tuple[torch.Tensor, Flow]]) -> None:
        state = self.session.top()
        for tensor, flow in pairs:
            self.session.table.put(tensor, flow)
            if state is not None and flow.role is Role.ATTENDED:
                self._maybe_merged(state, tensor, flow)

    def _observe(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        state, table = self.session.top(), self.session.table
        if name == SDPA:
            if state is not None:
                self._put(sdpa(table, state, args, kwargs, out, monitors=self.session.monitors))
            return
        if name == "linear":
            self._linear(state, args, kwargs, out)
            return
        flows = [(t, f) for t in _tensors(args, kwargs) if (f := table.get(t)) is not None]
        if not flows or name in prop.FACTORIES:
            return
        keep_whole = state is not None and flows[0][1].role is Role.PROJECTION
        if name in PRODUCTS and state is not None:
            read = product(table, state, name, args, kwargs, out)
            if read is not None:
                self._put(read)
                return
        if name in SOFTMAX and state is not None and flows[0][1].role is Role.SCORES:
            monitors = self.session.monitors
            self._put(softmax(state, args, kwargs, out, flows[0][1], monitors=monitors))
        elif name == "__setitem__":
            value = table.get(args[2]) if len(args) > 2 else None
            if value is not None:
                self._put(prop.store(args, value))
        elif name in prop.SPLITS and args and table.get(args[0]) is not None:
            self._split(state, name, args, kwargs, out, flows[0][1], keep_whole)
        elif name in prop.CATS:
            self._put(prop.concatenate(name, args, kwargs, out, table.get))
        elif name in prop.PERMUTATIONS and args and table.get(args[0]) is not None:
            self._put(prop.permute(name, args, kwargs, out, flows[0][1]))
        elif name in prop.INDEXING and args and table.get(args[0]) is not None:
            self._put(prop.index(name, args, kwargs, out, flows[0][1], keep_whole))
        else:
            self._put(prop.elementwise(name, args, out, flows))

    # -- projections -----------------------------------------------------------------------
    def _linear(
        self, state: CallState | None, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        x = args[0] if args else kwargs.get("input")
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            return
        flow = self.session.table.get(x)
        if state is None:
            if flow is not None:
                self._put(prop.elementwise("linear", args, out, [(x, flow)]))
            return
        if flow is None:
            if x.dim() < 2:
                return
            flow = Flow(
                Role.TOKENS,
                (x.dim() - 2, x.dim() - 1),
                (Segment(Source.OTHER.value, int(x.shape[-2])),),
            )
        if flow.role is Role.TOKENS and isinstance(weight, torch.Tensor):
            self._projection(state, x, flow, weight, out)
        elif flow.role is Role.ATTENDED:  # the output projection: tokens again
            self._maybe_merged(state, x, flow, force=True)
            self._put([(out, Flow(Role.TOKENS, flow.seq, flow.segments, ops=("to_out",)))])
        else:  # a projection of a projection (a LoRA up-projection): the same lineage
            self._put(prop.elementwise("linear", args, out, [(x, flow)]))

    def _projection(
        self, state: CallState, x: torch.Tensor, flow: Flow, weight: torch.Tensor, out: torch.Tensor
    ) -> None:
        name = state.weight_names.get(id(weight), "linear")
        if state.input_4d and "tokens" not in state.stages and x.dim() == 3 and flow.seq == (1, 2):
            state.add("tokens", tuple(x.shape), op="flatten (B, C, h, w) → (B, hw, C)")
        segments = flow.segments if flow.seq is not None else None
        pid = state.new_projection(weight, x, out, segments)
        packed = (out.dim() - 1, out.dim())
        self._put(
            [
                (
                    out,
                    Flow(
                        Role.PROJECTION,
                        flow.seq,
                        segments,
                        frozenset({pid}),
                        packed=packed,
                        ops=(name,),
                    ),
                )
            ]
        )

    def _split(self, state, name, args, kwargs, out, flow: Flow, keep_whole: bool) -> None:
        x = args[0]
        dim = kwargs.get(
            "dim",
            args[1] if name == "unbind" and len(args) > 1 else args[2] if len(args) > 2 else 0,
        )
        pieces = [p for p in out if isinstance(p, torch.Tensor)]
        dim = int(dim) % x.dim()
        fused = (
            flow.packed is not None
            and flow.packed[0] == dim
            and len(flow.lineage) == 1
            and len(pieces) in (2, 3)
            and (name != "unbind" or flow.packed[1] - flow.packed[0] > 1)
        )
        if state is not None and flow.role is Role.PROJECTION and fused:
            (parent,) = flow.lineage
            if name == "unbind":  # the pieces lose the unbound axis
                flow = prop.split(name, args, kwargs, out, flow, False)[0][1]
            for i, piece in enumerate(pieces):  # a fused to_qkv / to_kv: one lineage per piece
                pid = state.new_piece(parent, i, len(pieces))
                self._put(
                    [(piece, flow.then(f"{name} {i + 1}/{len(pieces)}", lineage=frozenset({pid})))]
                )
            return
        self._put(prop.split(name, args, kwargs, out, flow, keep_whole))

    def _maybe_merged(
        self, state: CallState, t: torch.Tensor, flow: Flow, *, force: bool = False
    ) -> None:
        """The first attended tensor back in token layout (B, N, H·d) is ``merged``."""
        main = state.main
        if "merged" in state.stages or main is None or t.dim() != 3 or flow.seq != (1, 2):
            return
        width = (main.heads or 0) * (main.head_dim or 0)
        if force or t.shape[-1] == width:
            state.add("merged", tuple(t.shape), op=chain(flow, "merge heads"))
