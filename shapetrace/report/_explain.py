"""One layer's journey as rows: step, stage, shape, layout, op and a sentence per stage.

The sentences follow the common tutorial table (Q from the image, K and V from the text
projected 768 → 320, split into heads, scores, softmax over the keys, weighted sum, merge,
output), with every number read from the recorded shapes; joint attention (SD3, Flux) gets its
own: image and text tokens joined in the model's order, one softmax over both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shapetrace.journey import LayerRecord, Stage
from shapetrace.report._format import DASH, TIMES, fmt_grid, fmt_shape, heads_text, symbolic

__all__ = ["BranchView", "Dims", "StageRow", "branch_views", "legend", "stage_rows"]


@dataclass(frozen=True)
class Dims:
    """The named dimensions of one layer call (None where no stage tells)."""

    B: int | None
    N: int | None
    M: int | None
    C: int | None  # inner width H·d
    C_in: int | None  # width of the image-side input
    D: int | None  # width of the key/value source (context for cross, input for self)
    C_out: int | None
    H: int
    d: int
    grid: tuple[int, int] | None
    cross: bool
    joint: bool = False
    text_first: bool = False

    @classmethod
    def of(cls, layer: LayerRecord) -> Dims:
        """Read the dimensions off ``layer``'s stages."""

        def axis(stage: str, i: int) -> int | None:
            if not layer.has(stage):
                return None
            shape = layer.shape(stage)
            return int(shape[i]) if -len(shape) <= i < len(shape) else None

        def width(stage: str) -> int | None:
            four_d = layer.has(stage) and len(layer.shape(stage)) == 4
            return axis(stage, 1) if four_d else axis(stage, -1)

        c_in = width("input")
        batch = axis("query", 0) or axis("input", 0)
        cross = layer.kind == "cross"
        joint = layer.kind == "joint"
        first = layer.segments.get("query", ())
        if joint:
            n: int | None = layer.tokens
            m: int | None = layer.context_tokens
        else:
            n = axis("query", 1) or axis("query_heads", 2)
            m = axis("key", 1) or axis("key_heads", 2) or axis("context", 1)
        return cls(
            B=batch,
            N=n,
            M=m,
            C=axis("query", -1) or layer.heads * layer.head_dim,
            C_in=c_in,
            D=(axis("context", -1) if cross or joint else c_in) or c_in,
            C_out=width("output"),
            H=layer.heads,
            d=layer.head_dim,
            grid=layer.resolution,
            cross=cross,
            joint=joint,
            text_first=bool(first) and first[0].source == "context",
        )


@dataclass(frozen=True)
class StageRow:
    """One row of a journey table."""

    step: int
    name: str
    shape: str
    layout: str
    op: str
    derived: bool
    raw_shape: str  # "(8, 1024, 77)" when the code's own shape differed, else ""
    raw_layout: str  # "(B*H, N, M)": the code's own layout, shown with raw_shape
    explanation: str


def _n(x: int | None) -> str:
    return DASH if x is None else str(x)


def _scale_text(layer: LayerRecord, d: int) -> str:
    nominal = 1 / math.sqrt(d) if d > 0 else None
    scale = layer.scale if layer.scale is not None else nominal
    if scale is None:
        return ""
    if nominal is not None and math.isclose(scale, nominal, rel_tol=1e-6):
        return f", scaled by 1/√{d} ≈ {scale:.3g}"
    return f", scaled by {scale:.4g} (not 1/√d)"


def _joint(stage: Stage, layer: LayerRecord, x: Dims) -> str | None:
    """Sentences of a joint layer's stages, or None where the plain ones fit."""
    name, tokens = stage.name, stage.shape[1] if len(stage.shape) > 1 else None
    order = "text then image" if x.text_first else "image then text"
    both = f"{_n(x.N)} image + {_n(x.M)} text tokens"
    joined = x.N is not None and x.M is not None and tokens == x.N + x.M
    if name in ("input", "output") and joined:
        return f"the joined sequence: {both} ({order}, joined by the block before this layer)"
    if name in ("query", "key", "value") and joined:
        return f"{name[0].upper()} of the joined sequence ({order}, joined before this layer)"
    if name.startswith("context_") and name != "context_output":
        letter = name.removeprefix("context_")[0].upper()
        projection = f"W_{letter} {_n(x.D)}{TIMES}{_n(x.C)}"
        return f"{letter} from the text tokens too: {projection} (joint attention)"
    if name in ("query_heads", "key_heads", "value_heads"):
        return f"{name[0].upper()} of {both} joined ({order}), split into {heads_text(x.H, x.d)}"
    if name == "scores":
        return f"Q·Kᵀ{_scale_text(layer, x.d)} over all {both}: image and text attend to each other"
    if name == "probs":
        return f"one softmax over all {_n((x.N or 0) + (x.M or 0))} keys, image and text together"
    if name == "cross_probs":
        return (
            f"the image-query × text-key block: how much each of the {_n(x.N)} image tokens "
            f"attends to each of the {_n(x.M)} text tokens (its rows sum to the text's share)"
        )
    if name == "attended":
        return f"probs · V for all {both}"
    if name == "merged":
        return f"merge the {x.H} heads back: {x.H}{TIMES}{x.d} = {_n(x.C)}, before the split"
    if name == "context_output":
        return "the text tokens' output, going on to the next block's text stream"
    return None


def _explain(stage: Stage, layer: LayerRecord, x: Dims, has_map: bool) -> str:
    if x.joint and (text := _joint(stage, layer, x)) is not None:
        return text
    image = "image token" if x.grid is not None or has_map else "query token"
    keys = "text tokens" if x.cross else f"{image}s"
    source = "the text" if x.cross else "the same tokens (self-attention)"
    grid = fmt_grid(x.grid)
    name, ndim = stage.name, len(stage.shape)
    if name == "feature_map" or (name == "input" and ndim == 4):
        where = "as the layer got it" if name == "input" else "from the convolutions before it"
        return f"image side: a feature map {where}, {_n(x.C_in)} channels on a {grid} grid"
    if name == "input" or name == "tokens":
        if has_map and x.grid is not None:
            h, w = x.grid
            return f"flattened to a sequence: {h}{TIMES}{w} = {h * w} {image}s of {_n(x.C_in)}"
        on_grid = f" ({grid} grid)" if x.grid is not None else ""
        return f"{_n(x.N)} {image}s{on_grid} of {_n(x.C_in)}, as the layer got them"
    if name == "context":
        return f"text side: {_n(x.M)} text tokens of {_n(x.D)} (encoder_hidden_states)"
    if name == "query":
        same = " (width unchanged)" if x.C_in == x.C else ""
        return f"Q from the {image}s: W_Q {_n(x.C_in)}{TIMES}{_n(x.C)}{same}"
    if name in ("key", "value"):
        letter = name[0].upper()
        another = "another linear layer, " if name == "value" else ""
        if x.cross and x.D != x.C:
            return (
                f"{letter} from the text: {another}W_{letter} {_n(x.D)}{TIMES}{_n(x.C)} "
                f"projects {_n(x.D)} → {_n(x.C)} to match the image side"
            )
        return f"{letter} from {source}: {another}W_{letter} {_n(x.D)}{TIMES}{_n(x.C)}"
    if name in ("query_heads", "key_heads", "value_heads"):
        letter = name[0].upper()
        return f"{letter}: split {_n(x.C)} into {heads_text(x.H, x.d)}"
    if name == "scores":
        kt = fmt_shape((x.B or 0, x.H, x.d, x.M or 0)) if x.B and x.M else "(B, H, d, M)"
        return (
            f"Q·Kᵀ (Kᵀ is {kt}){_scale_text(layer, x.d)}: {_n(x.N)} {image}s "
            f"× {_n(x.M)} {keys} per head"
        )
    if name == "probs":
        return (
            f"softmax over the last axis, the {_n(x.M)} keys: each {image}'s weights "
            f"over the {_n(x.M)} {keys} sum to 1"
        )
    if name == "attended":
        return f"probs · V: each {image} a weighted sum of the {_n(x.M)} value vectors"
    if name == "merged":
        if x.H == 1:
            return f"one head: nothing to merge, back to (B, N, {_n(x.C)})"
        return f"merge the {x.H} heads back: {x.H}{TIMES}{x.d} = {_n(x.C)}"
    if name == "output":
        what = "image features now carrying text information" if x.cross else "layer output"
        back = ", reshaped back to the feature map" if ndim == 4 else ""
        return f"W_O {_n(x.C)}{TIMES}{_n(x.C_out)} (to_out){back}: {what}"
    return ""


def _layout(stage: Stage, x: Dims) -> str:
    layout = symbolic(stage.name, len(stage.shape), joint=x.joint)
    if not x.joint or x.N is None or x.M is None or len(stage.shape) != 3:
        return layout
    if stage.name in ("input", "query", "key", "value", "output") and stage.shape[1] == x.N + x.M:
        return "(B, N+M, C)"  # image and text joined before the layer (Flux single-stream)
    if stage.name in ("key", "value") and stage.shape[1] == x.N:
        return "(B, N, C)"  # the image tokens' own keys and values
    return layout


def stage_rows(layer: LayerRecord) -> list[StageRow]:
    """The rows of ``layer``'s journey table, in recorded order, numbered from 1."""
    x = Dims.of(layer)
    has_map = layer.has("feature_map")
    rows = []
    for step, stage in enumerate(layer.stages, start=1):
        text = _explain(stage, layer, x, has_map)
        if stage.note:
            text = f"{text}; {stage.note}" if text else stage.note
        raw = layout = ""
        if stage.raw_shape is not None and tuple(stage.raw_shape) != tuple(stage.shape):
            raw, layout = fmt_shape(stage.raw_shape), stage.layout
        rows.append(
            StageRow(
                step=step,
                name=stage.name,
                shape=fmt_shape(stage.shape),
                layout=_layout(stage, x),
                op=stage.op or DASH,
                derived=stage.derived,
                raw_shape=raw,
                raw_layout=layout,
                explanation=text,
            )
        )
    return rows


def legend(layer: LayerRecord) -> str:
    """What each letter stands for in this layer, with its real number.

    >>> legend(first_cross_at_256)  # doctest: +SKIP
    'B=1 batch · N=1024 image tokens (32×32) · M=77 text tokens · C=320 = H·d = 8·40 · D=768'
    """
    x = Dims.of(layer)
    grid = f" ({fmt_grid(x.grid)})" if x.grid is not None else ""
    image = "image" if x.grid is not None or layer.has("feature_map") else "query"
    parts = [f"B={_n(x.B)} batch", f"N={_n(x.N)} {image} tokens{grid}"]
    if x.joint:
        parts.append(f"M={_n(x.M)} text tokens (queries and keys hold all N+M)")
    elif x.cross:
        parts.append(f"M={_n(x.M)} text tokens")
    else:
        parts.append(f"M={_n(x.M)} keys (= N, self-attention)")
    parts.append(f"C={_n(x.C)} = H·d = {x.H}·{x.d}")
    if x.cross or x.joint:
        parts.append(f"D={_n(x.D)} text width")
    return " · ".join(parts)


@dataclass(frozen=True)
class BranchView:
    """A further attention computation of the layer (an IP-Adapter's image prompt), as a
    title and (stage, shape, op) rows."""

    title: str
    rows: list[tuple[str, str, str]]


def branch_views(layer: LayerRecord) -> list[BranchView]:
    """One view per branch of ``layer``, in the order they ran."""
    views = []
    for b in layer.branches:
        keys = " + ".join(f"{s.tokens} {s.source}" for s in b.segments.get("key", ())) or "other"
        title = f"branch {b.name}: {b.kind}-attention of the same queries to {keys} tokens"
        rows = [(s.name, fmt_shape(s.shape), s.op or DASH) for s in b.stages]
        views.append(BranchView(title, rows))
    return views
