"""The bookkeeping of one attention call: projections and score computations as they are
seen, then the ``LayerRecord``.

Every linear projection of the layer's tokens gets a lineage id. A score op (q kᵀ, or fused
SDPA) opens a *branch* keyed by the lineages of its query and key: the first branch is the
layer's attention, later ones with other keys are further attention computations of the same
layer (an IP-Adapter's image prompt). Which projection was the query, key or value is read off
the branch, never off attribute names; so is the kind, from the sources of the keys' tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from shapetrace.journey import Branch, LayerRecord
from shapetrace.stages import Check, Segment, Stage
from shapetrace.tracing._discover import LayerInfo
from shapetrace.tracing._flow import segments_sources
from shapetrace.tracing._geometry import Grid
from shapetrace.tracing._heads import heads_layout
from shapetrace.tracing._naming import branch_name, kind_of, projection_stages

__all__ = ["BranchState", "CallState", "Projection"]

Shape = tuple[int, ...]


@dataclass
class Projection:
    """One linear projection seen inside the call (or one piece of a fused one)."""

    id: int
    name: str
    in_features: int
    out_features: int
    shape: Shape
    segments: tuple[Segment, ...] | None
    parent: int | None = None
    piece: int = 0
    pieces: int = 1
    in_shape: Shape = ()
    module: Any = field(default=None, repr=False)  # the Linear that ran (kept during the call)
    output: torch.Tensor | None = field(default=None, repr=False)

    @property
    def sources(self) -> frozenset[str]:
        return segments_sources(self.segments)

    def op(self) -> str:
        what = f"linear {self.in_features}→{self.out_features} ({self.name})"
        if self.parent is not None:
            what += f" → piece {self.piece + 1} of {self.pieces}"
        return what


@dataclass
class BranchState:
    """One score computation of the call: its stages and the tensors probes need."""

    q_lineage: frozenset[int]
    k_lineage: frozenset[int]
    q_segments: tuple[Segment, ...] | None
    k_segments: tuple[Segment, ...] | None
    v_lineage: frozenset[int] = frozenset()
    stages: dict[str, Stage] = field(default_factory=dict)
    scale: float | None = None  # everything q·kᵀ was multiplied by, q's and k's own included
    kept_scale: float = 1.0  # what q and k as kept already carry: probes apply scale / kept
    q_factor: float | None = None  # the factors q and k carry into the score op
    k_factor: float | None = None
    heads: int | None = None
    head_dim: int | None = None
    score_ops: int = 0
    derived: bool = False
    query: torch.Tensor | None = field(default=None, repr=False)
    key: torch.Tensor | None = field(default=None, repr=False)
    mask: torch.Tensor | None = field(default=None, repr=False)
    probs: torch.Tensor | None = field(default=None, repr=False)
    causal: bool = False
    q_axis: int = -2  # where the tokens are in ``query`` and ``key`` as kept
    k_axis: int = -2

    def add(self, name: str, shape: Shape, **extra: Any) -> None:
        if name not in self.stages:
            self.stages[name] = Stage(name=name, shape=tuple(int(s) for s in shape), **extra)


@dataclass
class CallState:
    """Everything recorded while one attention layer runs."""

    info: LayerInfo
    call: int
    batch: int
    geometry: tuple[Grid, ...] = ()  # candidate grids, innermost first
    dtype: str = ""
    device: str = ""
    input_4d: bool = False
    stages: dict[str, Stage] = field(default_factory=dict)
    projections: dict[int, Projection] = field(default_factory=dict)
    branches: list[BranchState] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    weight_names: dict[int, str] = field(default_factory=dict)
    weight_modules: dict[int, Any] = field(default_factory=dict)
    key: Any = None  # (layer path, input signature)

    # -- events from the recorder --------------------------------------------------------
    def add(self, name: str, shape: Shape, **extra: Any) -> None:
        """Record a layer-level stage the first time it is seen."""
        if name not in self.stages:
            self.stages[name] = Stage(name=name, shape=tuple(int(s) for s in shape), **extra)

    def new_projection(
        self,
        weight: torch.Tensor,
        x: torch.Tensor,
        out: torch.Tensor,
        segs: tuple[Segment, ...] | None,
    ) -> int:
        """A projection of ``x`` by ``weight`` (out_features, in_features) giving ``out``."""
        pid = len(self.projections) + 1
        out_f, in_f = int(weight.shape[0]), int(weight.shape[-1])
        name = self.weight_names.get(id(weight), "linear")
        self.projections[pid] = Projection(
            pid, name, in_f, out_f, tuple(out.shape), segs, in_shape=tuple(x.shape),
            module=self.weight_modules.get(id(weight)), output=out,
        )
        return pid

    def new_piece(self, parent: int, piece: int, pieces: int) -> int:
        """Piece ``piece`` of ``pieces`` of a fused projection: its share of the output
        features, (…, N, width / pieces), whatever layout the code split it in."""
        base = self.projections[parent]
        pid = len(self.projections) + 1
        shape = (*base.shape[:-1], base.shape[-1] // pieces)
        self.projections[pid] = Projection(
            pid,
            base.name,
            base.in_features,
            base.out_features,
            shape,
            base.segments,
            parent=parent,
            piece=piece,
            pieces=pieces,
            in_shape=base.in_shape,
        )
        return pid

    def width(self, lineage: frozenset[int]) -> int | None:
        """The projection width (H·d) of a q, k or v lineage."""
        widths = {self.projections[i].shape[-1] for i in lineage if i in self.projections}
        return max(widths) if widths else None

    def branch(
        self,
        q_lineage: frozenset[int],
        k_lineage: frozenset[int],
        q_segments: tuple[Segment, ...] | None,
        k_segments: tuple[Segment, ...] | None,
    ) -> tuple[BranchState, bool]:
        """The branch of this query/key pair, and whether it is new."""
        for b in self.branches:
            if b.q_lineage == q_lineage and b.k_lineage == k_lineage:
                return b, False
        made = BranchState(q_lineage, k_lineage, q_segments, k_segments)
        self.branches.append(made)
        return made, True

    def find_branch(self, q_lineage: frozenset[int], k_lineage: frozenset[int]) -> BranchState:
        return self.branch(q_lineage, k_lineage, None, None)[0]

    def heads(
        self,
        branch: BranchState,
        name: str,
        raw: Shape,
        seq_axis: int,
        lineage: frozenset[int],
        op: str,
        *,
        derived: bool = False,
        note: str = "",
    ) -> None:
        """A per-head stage (q, k, v or attended), recorded as (B, H, T, d)."""
        shape, layout, heads = heads_layout(
            raw, seq_axis, self.batch, self.width(lineage), branch.heads or self.info.heads
        )
        if branch.heads is None and heads is not None:
            branch.heads = heads
        if branch.head_dim is None and name == "query_heads" and len(shape) == 4:
            branch.head_dim = shape[-1]
        branch.add(
            name, shape, op=op, raw_shape=tuple(raw), layout=layout, derived=derived, note=note
        )

    def pair(
        self, branch: BranchState, name: str, raw: Shape, op: str, *, derived: bool = False
    ) -> None:
        """Scores or probabilities, (B*H, N, M) or (B, H, N, M), recorded as (B, H, N, M)."""
        shape, layout, _ = heads_layout(raw, len(raw) - 2, self.batch, None, branch.heads)
        layout = layout.replace("T, d", "N, M")
        branch.add(name, shape, op=op, raw_shape=tuple(raw), layout=layout, derived=derived)

    # -- the record ----------------------------------------------------------------------
    @property
    def main(self) -> BranchState | None:
        return self.branches[0] if self.branches else None

    def image_tokens(self) -> int | None:
        main = self.main
        if main is None or main.q_segments is None:
            return None
        return sum(s.tokens for s in main.q_segments if s.source == "hidden") or None

    def grid(self) -> Grid | None:
        """The grid the layer's own tokens come from: the 4-D input, else the innermost
        known grid (enclosing block input, patch embedding, caller) with that many tokens."""
        fm = self.stages.get("feature_map")
        if fm is not None and len(fm.shape) == 4:
            return Grid(fm.shape[2], fm.shape[3], "layer input", fm.shape)
        n = self.image_tokens()
        return next((g for g in self.geometry if n and g.tokens == n), None)

    def understood(self) -> str | None:
        """None when the call could be read as attention, else the reason it could not."""
        main = self.main
        if main is None:
            return (
                "no score computation was seen inside the call: no q·kᵀ (matmul, bmm, "
                "baddbmm, einsum) or scaled_dot_product_attention on two projections of its "
                "inputs (attention inside an op shapetrace cannot see, e.g. xformers?)"
            )
        if kind_of(main.q_segments, main.k_segments) is None:
            return "the query's or key's tokens could not be followed back to the layer's inputs"
        return None

    def record(self, name: str) -> LayerRecord:
        """The LayerRecord of an understood call (see ``understood``)."""
        main = self.main
        assert main is not None
        kind = kind_of(main.q_segments, main.k_segments) or "self"
        stages = dict(self.stages)
        grid = self.grid()
        if grid is not None and grid.feature_map is not None and "feature_map" not in stages:
            stages["feature_map"] = Stage(
                "feature_map", grid.feature_map, op=grid.source, note="flattened to tokens"
            )
        stages.update(projection_stages(self.projections, main))
        stages.update(main.stages)
        cross = self._cross_block(main, kind)
        if cross is not None:
            stages["cross_probs"] = cross
        heads = main.heads or self.info.heads or 1
        head_dim = main.head_dim or ((self.width(main.q_lineage) or 0) // heads)
        scale = main.scale if main.scale is not None and math.isfinite(main.scale) else None
        return LayerRecord(
            name=name,
            kind=kind,
            place=self.info.place,
            resolution=(grid.h, grid.w) if grid is not None else None,
            processor=self.info.processor_name(),
            heads=heads,
            head_dim=head_dim,
            stages=_ordered(stages),
            module_type=self.info.module_type,
            call=self.call,
            scale=scale,
            dtype=self.dtype,
            device=self.device,
            checks=self.checks,
            segments=_segments(main),
            branches=self._branches(),
        )

    def _cross_block(self, main: BranchState, kind: str) -> Stage | None:
        rows, cols = (
            cross_slices(main.q_segments, main.k_segments) if kind == "joint" else (None,) * 2
        )
        if rows is None or cols is None or "probs" not in main.stages:
            return None
        b, h = main.stages["probs"].shape[:2]
        shape = (b, h, rows.stop - rows.start, cols.stop - cols.start)
        op = f"probs[:, :, {rows.start}:{rows.stop}, {cols.start}:{cols.stop}]"
        return Stage("cross_probs", shape, op=op, derived=True, note="image queries x text keys")

    def _branches(self) -> list[Branch]:
        out: list[Branch] = []
        for b in self.branches[1:]:
            stages = dict(projection_stages(self.projections, b, keys_only=True))
            stages.update(b.stages)
            name = branch_name(b.k_segments, [x.name for x in out])
            kind = kind_of(b.q_segments, b.k_segments) or "cross"
            out.append(Branch(name, kind, _ordered(stages), _segments(b), b.scale))
        return out


def cross_slices(
    q: tuple[Segment, ...] | None, k: tuple[Segment, ...] | None
) -> tuple[slice | None, slice | None]:
    """The image-query rows and text-key columns of a joint layer, when each is one run."""
    return _run(q, "hidden"), _run(k, "context")


def _run(segments: tuple[Segment, ...] | None, source: str) -> slice | None:
    if not segments:
        return None
    runs, at = [], 0
    for seg in segments:
        if seg.source == source:
            runs.append(slice(at, at + seg.tokens))
        at += seg.tokens
    return runs[0] if len(runs) == 1 else None


def _segments(branch: BranchState) -> dict[str, tuple[Segment, ...]]:
    out = {}
    if branch.q_segments is not None:
        out["query"] = branch.q_segments
    if branch.k_segments is not None:
        out["key"] = branch.k_segments
    return out


def _ordered(stages: dict[str, Stage]) -> list[Stage]:
    from shapetrace.stages import STAGE_ORDER

    known = [stages[n] for n in STAGE_ORDER if n in stages]
    return known + [s for n, s in stages.items() if n not in STAGE_ORDER]
