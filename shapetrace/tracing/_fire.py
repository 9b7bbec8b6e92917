"""Handing a finished call to the probes: q and k in (B, H, T, d), read through the token
axes the data flow found, never guessed from sizes."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from shapetrace.journey import LayerRecord
from shapetrace.stages import Check
from shapetrace.tracing._call import CallState, cross_slices
from shapetrace.tracing._probe import AttentionCall, Probe

if TYPE_CHECKING:
    from shapetrace.tracing._discover import LayerInfo
    from shapetrace.tracing._memory import Learned
    from shapetrace.tracing._plan import Plan

__all__ = ["as_bhtd", "fire_planned", "fire_probes", "missed", "missed_off_path"]


def as_bhtd(t: torch.Tensor, axis: int, batch: int, heads: int) -> torch.Tensor | None:
    """(B, H, T, X) view of a per-head tensor whose tokens are on ``axis``; None if it is only
    a slice of the heads (sliced attention whose whole tensor was not kept)."""
    if t.dim() == 4:
        return t if axis == 2 else t.transpose(1, 2) if axis == 1 else None
    if t.dim() == 3 and axis == 1:
        if t.shape[0] == batch * heads:
            return t.reshape(batch, heads, t.shape[1], t.shape[2])
        if t.shape[0] == batch and heads == 1:
            return t.unsqueeze(1)
        return None
    if t.dim() == 2 and axis == 0:
        return t[None, None]
    return None


def _mask(mask: torch.Tensor | None, batch: int, heads: int) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dim() == 3 and mask.shape[0] == batch * heads:
        return mask.reshape(batch, heads, mask.shape[1], mask.shape[2])
    if mask.dim() == 3:
        return mask.unsqueeze(1)
    if mask.dim() == 2:
        return mask[None, None]
    return mask


def probe_wants(probe: Probe, record: LayerRecord) -> bool:
    """Whether ``probe`` wants this layer's calls (a probe without ``wants`` wants them all)."""
    wants = getattr(probe, "wants", None)
    return wants is None or bool(wants(record))


def missed(probes: Sequence[Probe], record: LayerRecord, why: str) -> None:
    """A call the probes wanted but could not be given: a failed check on the record, and
    ``on_missed(layer, why)`` for each probe that has one (the map store keeps it as an
    error, so no reader sees a map silently short of a layer)."""
    record.checks.append(Check("probes", False, f"the probes were not given this call: {why}"))
    for probe in probes:
        on_missed = getattr(probe, "on_missed", None)
        if callable(on_missed):
            on_missed(record, why)


def fire_probes(wanted: Sequence[Probe], state: CallState, record: LayerRecord) -> None:
    """Give the probes that want it this recorded call's q, k, scale, mask and probabilities.
    A probe's own error is raised: it stops the forward, and the tracer adds a note naming
    the layer."""
    main = state.main
    if not wanted or main is None or main.query is None or main.key is None:
        return
    batch, heads = record.stage("query_heads").shape[:2] if record.has("query_heads") else (0, 0)
    q = as_bhtd(main.query, main.q_axis, batch, heads)
    k = as_bhtd(main.key, main.k_axis, batch, heads)
    if q is None or k is None:
        missed(wanted, record, "q and k were only seen in slices of the heads")
        return
    probs = (
        as_bhtd(main.probs, main.probs.dim() - 2, batch, heads) if main.probs is not None else None
    )
    mask = _mask(main.mask, batch, heads)
    if main.causal:
        n, m = q.shape[2], k.shape[2]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(diagonal=m - n)[None, None]
    rows, cols = (
        cross_slices(main.q_segments, main.k_segments) if record.kind == "joint" else (None, None)
    )
    total = main.scale if main.scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scale = total / main.kept_scale  # q and k as kept already carry their own factors
    call = AttentionCall(record, q, k, scale, mask, probs, rows, cols, state.call)
    for probe in wanted:
        probe.on_attention(call)


_LATE = (
    "a forward hook was added to its {} projection inside the traced block, after the "
    "tracer began to watch it, so the output the model went on with is unknown; register "
    "hooks before entering the block"
)


def fire_planned(
    wanted: Sequence[Probe],
    plan: Plan,
    captures: dict[int, torch.Tensor | None],
    record: LayerRecord,
    call_index: int,
) -> None:
    """Give the probes that want it a call that ran without the recorder: q and k rebuilt
    from its projections' outputs through the plan learned on a recorded call of its
    signature (an output kept as None may have been replaced by a forward hook added in
    the block)."""
    q_module, k_module = plan.q.module(), plan.k.module()
    q_out = captures.get(id(q_module)) if q_module is not None else None
    k_out = captures.get(id(k_module)) if k_module is not None else None
    if not wanted or q_out is None or k_out is None:
        if wanted:
            late = [m for m in (q_module, k_module) if m is not None and id(m) in captures
                    and captures[id(m)] is None]
            missed(wanted, record, _LATE.format(type(late[0]).__name__) if late else
                   "a projection did not run as the learned plan says")
        return
    q = plan.q.heads(q_out, plan.heads, plan.head_dim)
    k = plan.k.heads(k_out, plan.heads, plan.head_dim)
    mask = None
    if plan.causal:
        n, m = q.shape[2], k.shape[2]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(diagonal=m - n)[None, None]
    call = AttentionCall(record, q, k, plan.scale, mask, call_index=call_index)
    for probe in wanted:
        probe.on_attention(call)


def missed_off_path(
    probes: Sequence[Probe], learned: Mapping[Hashable, Learned], info: LayerInfo
) -> None:
    """A light replay met a layer call off the known path: it ran without the recorder and
    without its projections kept, so the probes that would want it are told (a map store
    keeps that as an error; the next model call records with every hook). ``learned`` is the
    model's memory of layers by (layer path, signature)."""
    why = (
        "the model took another path than its earlier call with the same input "
        "signature, so this call ran unrecorded; a model whose attention path depends on "
        "input values needs trace(..., every_call=True)"
    )
    known = next((entry.record for key, entry in learned.items()
                  if key[0] == info.path and entry.record is not None), None)  # type: ignore[index]
    if known is not None:
        wanting = [p for p in probes if probe_wants(p, known)]
        if wanting:
            missed(wanting, replace(known, checks=[]), why)
        return
    # never recorded: there is no kind or grid to ask the probes with, so all of them hear
    unknown = LayerRecord(info.name, "", "", None, "", 0, 0, module_type=info.module_type)
    missed(probes, unknown, why)
