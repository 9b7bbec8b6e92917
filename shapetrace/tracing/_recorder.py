"""A TorchFunctionMode scoped to one attention call: it sees the ops that really run and
labels them as the journey's stages."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from shapetrace.tracing import _monitors
from shapetrace.tracing._call import CallState, ProbeFailed
from shapetrace.tracing._labels import Label

__all__ = ["Recorder", "op_name"]

_SCORE_OPS = frozenset({"matmul", "bmm", "baddbmm", "einsum", "__matmul__"})
_SOFTMAX_OPS = frozenset({"softmax", "_softmax"})
_MUL_OPS = frozenset({"mul", "mul_", "multiply", "__mul__", "__rmul__"})
_DIV_OPS = frozenset({"div", "div_", "true_divide", "divide", "__truediv__"})
_SDPA = "scaled_dot_product_attention"
_GETTERS = frozenset({"shape", "ndim", "dtype", "device", "size", "dim", "is_cuda", "numel"})


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


def _swaps_last_two(name: str, args: tuple[Any, ...], ndim: int) -> bool:
    if name in ("mT", "T", "mH", "t"):
        return True
    if name in ("transpose", "swapaxes", "swapdims") and len(args) >= 3:
        return {int(args[1]) % ndim, int(args[2]) % ndim} == {ndim - 2, ndim - 1}
    if name == "permute" and len(args) >= 2:
        dims = args[1] if isinstance(args[1], (list, tuple)) else args[1:]
        dims = [int(d) % ndim for d in dims]
        return len(dims) == ndim and dims[-2:] == [ndim - 1, ndim - 2]
    return False


def _scalar(args: tuple[Any, ...]) -> float | None:
    for value in args[1:2]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _chain(label: Label | None, fallback: str) -> str:
    if label is None or not label.ops:
        return fallback
    return "→".join(label.ops)


class Recorder(TorchFunctionMode):
    """Runs every op unchanged, then labels what it produced. Bookkeeping errors never
    break the model's forward: they are noted on the call instead."""

    def __init__(self, state: CallState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = op_name(func)
        if name in _GETTERS:
            return out
        try:
            self._observe(name, args, kwargs, out)
        except ProbeFailed as failed:  # the probe's error is the user's: it stops the forward
            raise failed.original from None
        except Exception as exc:  # pragma: no cover - defensive, reported in the journey
            self.state.checks.append(
                _monitors.Check("recorder", False, f"could not label op {name}: {exc}")
            )
        return out

    # -- dispatch ------------------------------------------------------------------------
    def _observe(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        labels = self.state.labels
        seen = [(t, lab) for t in _tensors(args, kwargs) if (lab := labels.get(t)) is not None]
        if name == _SDPA:
            self._sdpa(args, kwargs, out, seen)
            return
        if not seen:
            return
        roles = {lab.role for _, lab in seen}
        if name in _SCORE_OPS and "q" in roles and roles & {"k", "kT"}:
            self._scores(name, args, kwargs, out, seen)
        elif name in _SCORE_OPS and roles >= {"p", "v"}:
            self._attended(name, out, seen)
        elif name in _SOFTMAX_OPS and roles == {"qk"}:
            self._softmax(args, kwargs, out)
        else:
            self._propagate(name, args, out, seen, roles)

    def _propagate(self, name, args, out, seen, roles) -> None:
        if len(roles) != 1:
            return
        label = seen[0][1]
        factor = 1.0  # each lineage carries its own scale, so query chunks never compound
        scalar = _scalar(args) if label.role in ("q", "k", "kT", "qk") else None
        if scalar is not None and name in _MUL_OPS:
            factor = scalar
        elif scalar and name in _DIV_OPS:
            factor = 1.0 / scalar
        outs = out if isinstance(out, (list, tuple)) else (out,)
        for item in outs:
            if not isinstance(item, torch.Tensor):
                continue
            new = label.then(name, factor)
            first = seen[0][0]
            if label.role in ("k", "kT") and _swaps_last_two(name, args, first.dim()):
                if label.role == "k":  # keep the key's own chain; the transpose is q kᵀ's
                    new = Label("kT", label.ops, tuple(first.shape), first, new.scale)
                else:
                    new = Label("k", new.ops, scale=new.scale)
            self.state.labels.put(item, new)

    # -- the stages ----------------------------------------------------------------------
    def _scores(self, name, args, kwargs, out, seen) -> None:
        state = self.state
        q, q_label = next((t, lab) for t, lab in seen if lab.role == "q")
        k, k_label = next((t, lab) for t, lab in seen if lab.role in ("k", "kT"))
        if k_label.role == "kT" and k_label.parent is not None:
            k = k_label.parent
        state.q_raw, state.k_raw = q, k
        state.add_heads("query_heads", q, _chain(q_label, "to_q"))
        state.add_heads("key_heads", k, _chain(k_label, "to_k"))
        scale = q_label.scale * k_label.scale
        if name == "baddbmm":
            scale *= float(kwargs.get("alpha", args[4] if len(args) > 4 else 1))
        if state.pending_scores is None:
            state.pending_scores = (tuple(out.shape), name)
            state.scale = scale
        state.labels.put(out, Label("qk", (name,), scale=scale))

    def _softmax(self, args, kwargs, out) -> None:
        state = self.state
        scores = args[0]
        label = state.labels.get(scores)
        if "probs" not in state.stages and label is not None:
            state.scale = label.scale  # the scale of the scores that really entered softmax
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        ndim = scores.dim()
        axis = ndim - 1 if dim is None else int(dim) % ndim
        state.softmax_dim = axis - ndim
        made_by = state.pending_scores[1] if state.pending_scores else "scores"
        scale = f" · {state.scale:.4g}" if state.scale != 1.0 else ""
        state.add_pair("scores", tuple(scores.shape), f"{made_by}{scale}")
        state.add_pair("probs", tuple(out.shape), f"softmax(dim={axis - ndim})")
        state.labels.put(out, Label("p", ("softmax",)))
        if state.monitors:
            _monitors.softmax_checks(state, scores, out, axis)
        probes = state.wanted_by()
        if probes and axis == ndim - 1:
            state.fire(probes, scale=state.scale, probs=out)

    def _attended(self, name, out, seen) -> None:
        v, v_label = next((t, lab) for t, lab in seen if lab.role == "v")
        self.state.add_heads("value_heads", v, _chain(v_label, "to_v"))
        self.state.add_heads("attended", out, name)
        self.state.labels.put(out, Label("pv", (name,)))

    def _sdpa(self, args, kwargs, out, seen) -> None:
        state = self.state
        names = ("query", "key", "value", "attn_mask")
        given = dict(zip(names, args))
        given.update({n: kwargs[n] for n in names if n in kwargs})
        q, k, v = given["query"], given["key"], given["value"]
        mask = given.get("attn_mask")
        labels = state.labels
        state.q_raw, state.k_raw = q, k
        state.add_heads("query_heads", q, _chain(labels.get(q), "query"))
        state.add_heads("key_heads", k, _chain(labels.get(k), "key"))
        state.add_heads("value_heads", v, _chain(labels.get(v), "value"))
        scale = kwargs.get("scale")
        state.sdpa_scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        pair = (*q.shape[:-1], k.shape[-2])
        derived = f"derived: softmax(q kᵀ · {state.sdpa_scale:.4g}) beside fused SDPA"
        state.add_pair("scores", pair, "derived: q kᵀ · scale (never materialized)", derived=True)
        state.add_pair("probs", pair, derived, derived=True)
        state.softmax_dim = -1
        if state.monitors:
            state.checks.append(
                _monitors.Check("softmax_axis", True, "fused SDPA: over the keys by construction")
            )
        if isinstance(out, torch.Tensor):
            state.add_heads("attended", out, _SDPA)
            labels.put(out, Label("pv", (_SDPA,)))
        probes = state.wanted_by()
        if probes:
            state.fire(probes, scale=state.sdpa_scale, mask=mask)
