"""The bookkeeping of one attention call: stages as they are seen, then a LayerRecord."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from shapetrace.journey import STAGE_ORDER, Check, LayerRecord, Stage
from shapetrace.tracing._discover import LayerInfo
from shapetrace.tracing._labels import LabelTable
from shapetrace.tracing._normalize import heads_layout, to_bhtd

__all__ = ["AttentionCall", "CallState", "Probe"]

Shape = tuple[int, ...]


@dataclass
class AttentionCall:
    """What a probe sees of one attention call, once its probabilities are known or derivable.

    ``query_heads`` (B, H, N, d) and ``key_heads`` (B, H, M, d) are views of the tensors that
    entered the score computation; ``probs`` is (B, H, N, M) when the code materialized them.
    """

    layer: LayerRecord
    query_heads: torch.Tensor
    key_heads: torch.Tensor
    scale: float
    mask: torch.Tensor | None = None
    probs: torch.Tensor | None = None

    def compute_probs(
        self,
        dtype: torch.dtype = torch.float32,
        rows: torch.Tensor | None = None,
        *,
        grad: bool = False,
    ) -> torch.Tensor:
        """softmax(q kᵀ · scale) over the keys, (B, H, N, M), computed beside the layer.

        ``rows`` (a 1-D index of batch rows) computes only those rows, (R, H, N, M): under
        classifier-free guidance a store that keeps the conditional half pays for half.
        ``grad=True`` keeps the autograd graph back to q and k (and so to the latents and the
        model's weights) when the forward runs with gradients enabled, for losses on the maps
        (Attend-and-Excite, Break-a-Scene); by default nothing is recorded for autograd.
        """
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if self.probs is not None:
                probs = self.probs if rows is None else self.probs.index_select(0, rows)
                return probs.to(dtype)
            q, k, mask = self.query_heads, self.key_heads, self.mask
            if rows is not None:
                q, k = q.index_select(0, rows), k.index_select(0, rows)
                if mask is not None and mask.dim() == 4 and mask.shape[0] > 1:
                    mask = mask.index_select(0, rows)
            scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * self.scale
            if mask is not None:
                if mask.dtype == torch.bool:
                    scores = scores.masked_fill(~mask, float("-inf"))
                else:
                    scores = scores + mask.to(dtype)
            return scores.softmax(dim=-1)


class ProbeFailed(Exception):
    """Carries a probe's own exception out of the recorder, which re-raises it unchanged."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


class Probe(Protocol):
    def on_attention(self, call: AttentionCall) -> None: ...


@dataclass
class CallState:
    """Everything recorded while one attention layer runs."""

    info: LayerInfo
    call: int
    probes: tuple[Probe, ...] = ()
    monitors: bool = True
    geometry: Shape | None = None  # (B, C, h, w) of the innermost 4-D ancestor input
    labels: LabelTable = field(default_factory=LabelTable)
    stages: dict[str, Stage] = field(default_factory=dict)
    kind: str | None = None
    scale: float = 1.0  # of the first scores seen: scalars on q, k and the scores, and alpha
    sdpa_scale: float | None = None
    heads: int | None = None
    head_dim: int | None = None
    softmax_dim: int | None = None
    checks: list[Check] = field(default_factory=list)
    q_in: torch.Tensor | None = field(default=None, repr=False)
    q_raw: torch.Tensor | None = field(default=None, repr=False)
    k_raw: torch.Tensor | None = field(default=None, repr=False)
    probed: bool = False
    pending_scores: tuple[Shape, str] | None = None
    record: LayerRecord | None = None
    dtype: str = ""
    device: str = ""

    # -- stages ------------------------------------------------------------------------
    def add(self, name: str, shape: Shape, **extra: Any) -> None:
        """Record a stage the first time it is seen (a chunked layer repeats its ops)."""
        if name not in self.stages:
            self.stages[name] = Stage(name=name, shape=tuple(int(s) for s in shape), **extra)

    @property
    def batch(self) -> int | None:
        for name in ("query", "input", "tokens"):
            if name in self.stages and self.stages[name].shape:
                return self.stages[name].shape[0]
        return None

    def add_heads(self, name: str, tensor: torch.Tensor, op: str) -> None:
        raw = tuple(tensor.shape)
        shape, layout, heads = heads_layout(raw, self.batch, self.heads or self.info.heads)
        if self.heads is None and heads is not None:
            self.heads = heads
        if self.head_dim is None and name == "query_heads":
            self.head_dim = shape[-1]
        self.add(name, shape, op=op, raw_shape=raw, layout=layout)

    def add_pair(self, name: str, raw: Shape, op: str, *, derived: bool = False) -> None:
        """Scores or probabilities: (B*H, N, M) or (B, H, N, M), recorded as (B, H, N, M)."""
        shape, layout, _ = heads_layout(raw, self.batch, self.heads)
        layout = layout.replace("T, d", "N, M")
        self.add(name, shape, op=op, raw_shape=raw, layout=layout, derived=derived)

    # -- probes --------------------------------------------------------------------------
    def _layer_view(self) -> LayerRecord:
        return LayerRecord(
            name=self.info.name,
            kind=self.kind or "self",
            place=self.info.place,
            resolution=self.resolution(),
            processor=self.info.processor_name(),
            heads=self.heads or self.info.heads or 1,
            head_dim=self.head_dim or 0,
            module_type=self.info.module_type,
            call=self.call,
        )

    def wanted_by(self) -> list[Probe]:
        if not self.probes or self.probed:
            return []
        view = self._layer_view()
        return [p for p in self.probes if getattr(p, "wants", lambda _layer: True)(view)]

    def fire(
        self,
        probes: list[Probe],
        *,
        scale: float,
        mask: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
    ) -> None:
        if self.q_raw is None or self.k_raw is None or not probes:
            return
        batch, heads = self.batch, self.heads
        if batch is None or heads is None:
            return
        if self.q_raw.dim() == 3 and self.q_raw.shape[0] != batch * heads:
            return  # a slice of the (B*H) axis: probes see whole calls only
        self.probed = True
        call = AttentionCall(
            layer=self._layer_view(),
            query_heads=to_bhtd(self.q_raw, batch, heads),
            key_heads=to_bhtd(self.k_raw, batch, heads),
            scale=scale,
            mask=mask,
            probs=to_bhtd(probs, batch, heads) if probs is not None else None,
        )
        for probe in probes:
            try:
                probe.on_attention(call)
            except Exception as exc:
                raise ProbeFailed(exc) from exc

    # -- the record ----------------------------------------------------------------------
    def resolution(self) -> tuple[int, int] | None:
        if "feature_map" in self.stages:
            fm = self.stages["feature_map"].shape
            return (fm[2], fm[3])
        return None

    def attach_geometry(self, input_shape: Shape) -> None:
        """Record the feature map this layer's tokens came from, if the geometry agrees."""
        if len(input_shape) == 4:
            self.add("feature_map", input_shape, op="layer input")
            return
        g = self.geometry
        if g is not None and len(input_shape) == 3 and input_shape[1] == g[2] * g[3]:
            self.add("feature_map", g, op="enclosing block input", note="flattened to tokens")

    def effective_scale(self) -> float | None:
        if self.sdpa_scale is not None:
            return self.sdpa_scale
        return self.scale if (self.pending_scores is not None or "scores" in self.stages) else None

    def finish(self) -> LayerRecord:
        order = [*STAGE_ORDER[:2], "tokens", *STAGE_ORDER[2:]]
        stages = [self.stages[n] for n in order if n in self.stages]
        stages += [s for n, s in self.stages.items() if n not in order]
        heads = self.heads or self.info.heads or 1
        head_dim = self.head_dim
        if head_dim is None and "query" in self.stages:
            head_dim = self.stages["query"].shape[-1] // heads
        scale = self.effective_scale()
        self.record = LayerRecord(
            name=self.info.name,
            kind=self.kind or "self",
            place=self.info.place,
            resolution=self.resolution(),
            processor=self.info.processor_name(),
            heads=heads,
            head_dim=head_dim or 0,
            stages=stages,
            module_type=self.info.module_type,
            call=self.call,
            scale=None if scale is None else float(scale),
            dtype=self.dtype,
            device=self.device,
            checks=self.checks,
        )
        return self.record


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
