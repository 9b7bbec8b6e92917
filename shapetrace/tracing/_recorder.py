"""A TorchFunctionMode over a traced block: it runs every op unchanged, follows the flows, and
reads attention off them: projections, q kᵀ, softmax, probs times v, fused SDPA.

Bookkeeping errors never break the model's forward: they become a failed ``recorder`` check on
the call instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from shapetrace.stages import Check, Segment
from shapetrace.tracing import _monitors
from shapetrace.tracing import _propagate as prop
from shapetrace.tracing._call import BranchState, CallState
from shapetrace.tracing._flow import Flow, FlowTable, Role, Source

__all__ = ["Recorder", "Session", "op_name"]

_PRODUCTS = frozenset({"matmul", "bmm", "baddbmm", "einsum", "__matmul__", "__rmatmul__"})
_SOFTMAX = frozenset({"softmax", "_softmax"})
_SDPA = "scaled_dot_product_attention"
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


def _chain(flow: Flow, fallback: str) -> str:
    return "→".join(flow.ops) if flow.ops else fallback


def _resolve(t: torch.Tensor, flow: Flow) -> tuple[torch.Tensor, Flow]:
    """The whole tensor a slice was cut from (in the slice's layout), while it is alive."""
    if flow.whole is None:
        return t, flow
    ref, origin, perm = flow.whole
    whole = ref()
    if whole is None:
        return t, flow
    return (whole.permute(*perm) if perm else whole), origin


def _einsum_operands(args: tuple[Any, ...]) -> tuple[str, list[Any]]:
    equation = str(args[0]).replace(" ", "")
    operands = (
        list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    )
    return equation, operands


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
        if name == _SDPA:
            if state is not None:
                self._sdpa(state, args, kwargs, out)
            return
        if name == "linear":
            self._linear(state, args, kwargs, out)
            return
        flows = [(t, f) for t in _tensors(args, kwargs) if (f := table.get(t)) is not None]
        if not flows or name in prop.FACTORIES:
            return
        keep_whole = state is not None and flows[0][1].role is Role.PROJECTION
        if (
            name in _PRODUCTS
            and state is not None
            and self._product(state, name, args, kwargs, out)
        ):
            return
        if name in _SOFTMAX and state is not None and flows[0][1].role is Role.SCORES:
            self._softmax(state, args, kwargs, out, flows[0][1])
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

    # -- scores, probabilities, attended values ------------------------------------------------
    def _product(self, state: CallState, name: str, args, kwargs, out) -> bool:
        if not isinstance(out, torch.Tensor):
            return False
        if name == "einsum":
            return self._einsum(state, args, out)
        alpha, mask = 1.0, None
        if name == "baddbmm":
            a, b = args[1], args[2]
            alpha = float(kwargs.get("alpha", args[4] if len(args) > 4 else 1.0))
            beta = float(kwargs.get("beta", args[3] if len(args) > 3 else 1.0))
            mask = args[0] if beta != 0 and isinstance(args[0], torch.Tensor) else None
        elif name == "__rmatmul__":
            a, b = args[1], args[0]
        else:
            a, b = args[0], args[1]
        table = self.session.table
        fa, fb = table.get(a), table.get(b)
        if fa is None or fb is None:
            return False
        if fa.role is Role.PROJECTION and fb.role is Role.PROJECTION:
            if fa.seq_axis not in (None, a.dim() - 2) or fb.seq_axis not in (None, b.dim() - 1):
                return False  # not q (…, N, d) times kᵀ (…, d, M)
            k_all, _ = _resolve(b, fb)
            key = k_all.transpose(-1, -2)
            axes = (out.dim() - 2, out.dim() - 1)
            self._scores(
                state, name, (a, a.dim() - 2, fa), (key, key.dim() - 2, fb), out, axes, alpha, mask
            )
            return True
        if fa.role is Role.PROBS and fb.role is Role.PROJECTION:
            self._attended(state, name, fa, (b, b.dim() - 2, fb), out, out.dim() - 2)
            return True
        return False

    def _einsum(self, state: CallState, args, out) -> bool:
        """q·kᵀ and probs·v written as einsum ("bhnd,bhmd->bhnm", "bhnm,bhmd->bhnd", or any
        other letters): read which axes are contracted and where the tokens go."""
        equation, operands = _einsum_operands(args)
        if len(operands) != 2 or "..." in equation or "->" not in equation:
            return False
        inputs, result = equation.split("->")
        letters = inputs.split(",")
        a, b = operands
        table = self.session.table
        fa, fb = table.get(a), table.get(b)
        if fa is None or fb is None or len(letters) != 2 or fb.seq_axis is None:
            return False
        la, lb = letters
        if fa.role is Role.PROJECTION and fb.role is Role.PROJECTION and fa.seq_axis is not None:
            qa, kb = la[fa.seq_axis], lb[fb.seq_axis]
            if qa == kb or qa not in result or kb not in result:
                return False
            axes = (result.index(qa), result.index(kb))
            self._scores(
                state, "einsum", (a, fa.seq_axis, fa), (b, fb.seq_axis, fb), out, axes, 1.0, None
            )
            return True
        if fa.role is Role.PROBS and fb.role is Role.PROJECTION and fa.seq_axis is not None:
            key_letter = la[fa.key_axis] if fa.key_axis is not None else la[-1]
            if key_letter != lb[fb.seq_axis] or key_letter in result:
                return False
            self._attended(
                state, "einsum", fa, (b, fb.seq_axis, fb), out, result.index(la[fa.seq_axis])
            )
            return True
        return False

    def _scores(self, state, name, query, key, out, axes, alpha, mask) -> None:
        """q (with its token axis) times k (in its own layout, token axis given)."""
        (q, q_axis, fq), (k, k_axis, fk) = query, key
        branch, new = state.branch(fq.lineage, fk.lineage, fq.segments, fk.segments)
        branch.score_ops += 1
        scale = fq.scale * fk.scale * alpha
        if new:
            q_all, fq_all = _resolve(q, fq)
            state.heads(
                branch, "query_heads", tuple(q_all.shape), q_axis, fq.lineage, _chain(fq, "query")
            )
            state.heads(branch, "key_heads", tuple(k.shape), k_axis, fk.lineage, _chain(fk, "key"))
            branch.scale, branch.mask, branch.kept_scale = scale, mask, fq.scale * fk.scale
            branch.q_factor, branch.k_factor = fq.scale, fk.scale
            branch.query, branch.key, branch.q_axis, branch.k_axis = q_all, k, q_axis, k_axis
            branch.q_segments = fq_all.segments if fq_all.segments is not None else fq.segments
            state.pair(branch, "scores", tuple(out.shape), name)
        flow = Flow(
            Role.SCORES,
            (axes[0], axes[0] + 1),
            fq.segments,
            fq.lineage,
            scale=scale,
            ops=(name,),
            key=(axes[1], axes[1] + 1),
            key_segments=fk.segments,
            key_lineage=fk.lineage,
        )
        self._put([(out, flow)])

    def _softmax(self, state: CallState, args, kwargs, out, flow: Flow) -> None:
        scores = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        ndim = scores.dim()
        axis = (0 if ndim in (0, 1, 3) else 1) if dim is None else int(dim) % ndim
        branch = state.find_branch(flow.lineage, flow.key_lineage)
        key_axis = flow.key_axis if flow.key_axis is not None else ndim - 1
        if "probs" not in branch.stages:
            branch.scale = flow.scale  # the scale of the scores that really entered softmax
            scaled = f" · {flow.scale:.4g}" if flow.scale != 1.0 else ""
            branch.stages.pop("scores", None)
            state.pair(branch, "scores", tuple(scores.shape), f"{_chain(flow, 'scores')}{scaled}")
            state.pair(branch, "probs", tuple(out.shape), f"softmax(dim={axis - ndim})")
            whole = branch.query is not None and branch.query.shape[:-1] == out.shape[:-1]
            if whole and axis == key_axis and branch.score_ops == 1:
                branch.probs = out
        if self.session.monitors:
            _monitors.softmax_checks(state, scores, out, axis, key_axis)
        self._put([(out, flow.then("softmax", role=Role.PROBS))])

    def _attended(self, state: CallState, name, fp: Flow, value, out, out_axis: int) -> None:
        v, v_axis, fv = value
        branch = state.find_branch(fp.lineage, fp.key_lineage)
        branch.v_lineage = branch.v_lineage | fv.lineage
        if "value_heads" not in branch.stages:
            v_all, _ = _resolve(v, fv)
            state.heads(
                branch, "value_heads", tuple(v_all.shape), v_axis, fv.lineage, _chain(fv, "value")
            )
            state.heads(branch, "attended", tuple(out.shape), out_axis, fv.lineage, name)
        flow = Flow(Role.ATTENDED, (out_axis, out_axis + 1), fp.segments, fp.lineage, ops=(name,))
        self._put([(out, flow)])

    def _sdpa(self, state: CallState, args, kwargs, out) -> None:
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        given = dict(zip(names, args))
        given.update({n: kwargs[n] for n in names if n in kwargs})
        q, k, v = given["query"], given["key"], given["value"]
        table = self.session.table
        fq, fk, fv = (table.get(t) or Flow(Role.PROJECTION, None, None) for t in (q, k, v))
        branch, new = state.branch(fq.lineage, fk.lineage, fq.segments, fk.segments)
        branch.v_lineage, branch.derived = branch.v_lineage | fv.lineage, True
        branch.score_ops += 1
        if new:
            self._sdpa_stages(state, branch, given, (fq, fk, fv), out)
        if isinstance(out, torch.Tensor):
            self._put(
                [
                    (
                        out,
                        Flow(
                            Role.ATTENDED,
                            (out.dim() - 2, out.dim() - 1),
                            fq.segments,
                            fq.lineage,
                            ops=(_SDPA,),
                        ),
                    )
                ]
            )

    def _sdpa_stages(self, state, branch: BranchState, given, flows, out) -> None:
        (q, k, v), (fq, fk, fv) = (given["query"], given["key"], given["value"]), flows
        q_all, fq_all = _resolve(q, fq)
        k_all, _ = _resolve(k, fk)
        for stage, t, f in (
            ("query_heads", q_all, fq),
            ("key_heads", k_all, fk),
            ("value_heads", _resolve(v, fv)[0], fv),
        ):
            state.heads(branch, stage, tuple(t.shape), t.dim() - 2, f.lineage, _chain(f, stage[0]))
        scale = given.get("scale")
        base = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        branch.scale = base * fq.scale * fk.scale
        branch.kept_scale = fq.scale * fk.scale
        branch.q_factor, branch.k_factor = fq.scale, fk.scale
        pair = (*q_all.shape[:-1], k_all.shape[-2])
        derived = f"derived: softmax(q kᵀ · {branch.scale:.4g}) beside fused SDPA"
        state.pair(
            branch, "scores", pair, "derived: q kᵀ · scale (never materialized)", derived=True
        )
        state.pair(branch, "probs", pair, derived, derived=True)
        if isinstance(out, torch.Tensor):
            state.heads(branch, "attended", tuple(out.shape), out.dim() - 2, fv.lineage, _SDPA)
        branch.query, branch.key = q_all, k_all
        branch.q_axis, branch.k_axis = q_all.dim() - 2, k_all.dim() - 2
        branch.mask, branch.causal = given.get("attn_mask"), bool(given.get("is_causal", False))
        if fq_all.segments is not None:
            branch.q_segments = fq_all.segments
        if self.session.monitors:
            state.checks.append(
                Check("softmax_axis", True, "fused SDPA: over the keys by construction")
            )

    def _maybe_merged(
        self, state: CallState, t: torch.Tensor, flow: Flow, *, force: bool = False
    ) -> None:
        """The first attended tensor back in token layout (B, N, H·d) is ``merged``."""
        main = state.main
        if "merged" in state.stages or main is None or t.dim() != 3 or flow.seq != (1, 2):
            return
        width = (main.heads or 0) * (main.head_dim or 0)
        if force or t.shape[-1] == width:
            state.add("merged", tuple(t.shape), op=_chain(flow, "merge heads"))
