"""The stage registry: every stage a journey can hold, in order, with its normalized layout.

One table used by the tracer (which stages it records and in which order), the JSON (the stage
names) and the reports (the symbolic layout and a title for each row). Token tensors are
(B, N|M, C), head tensors (B, H, N|M, d), scores and probabilities (B, H, N, M); in joint
attention (SD3, Flux) the query and key axes hold every token, image and text, in the model's
own order, and ``cross_probs`` is the image-query x text-key block.

>>> stage_spec("scores").layout
'(B, H, N, M)'
>>> STAGE_ORDER.index("query") < STAGE_ORDER.index("scores")
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["STAGES", "STAGE_ORDER", "Check", "Segment", "Stage", "StageSpec", "stage_spec"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class StageSpec:
    """A stage's name, its layout in the normalized form, and what it is in a few words."""

    name: str
    layout: str
    title: str


#: Every stage, in the order a layer goes through them.
STAGES: tuple[StageSpec, ...] = (
    StageSpec("feature_map", "(B, C, h, w)", "the feature map the tokens come from"),
    StageSpec("input", "(B, N, C)", "the layer's input, as given"),
    StageSpec("tokens", "(B, N, C)", "the feature map flattened to tokens"),
    StageSpec("context", "(B, M, D)", "the tokens keys and values come from (text)"),
    StageSpec("query", "(B, N, C)", "query projection"),
    StageSpec("key", "(B, M, C)", "key projection"),
    StageSpec("value", "(B, M, C)", "value projection"),
    StageSpec("context_query", "(B, M, C)", "query projection of the text tokens"),
    StageSpec("context_key", "(B, M, C)", "key projection of the text tokens"),
    StageSpec("context_value", "(B, M, C)", "value projection of the text tokens"),
    StageSpec("query_heads", "(B, H, N, d)", "queries split into heads"),
    StageSpec("key_heads", "(B, H, M, d)", "keys split into heads"),
    StageSpec("value_heads", "(B, H, M, d)", "values split into heads"),
    StageSpec("scores", "(B, H, N, M)", "q kᵀ times the scale"),
    StageSpec("probs", "(B, H, N, M)", "softmax over the keys"),
    StageSpec("cross_probs", "(B, H, N, M)", "the image-query x text-key block of probs"),
    StageSpec("attended", "(B, H, N, d)", "probs times the values"),
    StageSpec("merged", "(B, N, C)", "heads merged back"),
    StageSpec("output", "(B, N, C)", "the layer's output"),
    StageSpec("context_output", "(B, M, C)", "the text tokens' output (joint attention)"),
)

STAGE_ORDER: tuple[str, ...] = tuple(spec.name for spec in STAGES)
_BY_NAME = MappingProxyType({spec.name: spec for spec in STAGES})


def stage_spec(name: str) -> StageSpec | None:
    """The registry entry of stage ``name``, or None for a stage the registry does not know."""
    return _BY_NAME.get(name)


@dataclass(frozen=True)
class Stage:
    """One named step of a layer's journey.

    ``shape`` is in the normalized layout; ``raw_shape`` is what the op really produced when
    that differs. ``derived`` marks a stage computed beside the layer rather than seen (the
    scores and probabilities of fused SDPA, which never materializes them).
    """

    name: str
    shape: Shape
    op: str = ""
    raw_shape: Shape | None = None
    layout: str = ""
    derived: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape)}
        if self.op:
            out["op"] = self.op
        if self.raw_shape is not None and self.raw_shape != self.shape:
            out["raw_shape"] = list(self.raw_shape)
        if self.layout:
            out["layout"] = self.layout
        if self.derived:
            out["derived"] = True
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        raw = data.get("raw_shape")
        return cls(
            name=data["name"],
            shape=tuple(data["shape"]),
            op=data.get("op", ""),
            raw_shape=tuple(raw) if raw is not None else None,
            layout=data.get("layout", ""),
            derived=bool(data.get("derived", False)),
            note=data.get("note", ""),
        )


@dataclass(frozen=True)
class Segment:
    """A run of tokens along a sequence axis that came from one input of the layer.

    ``source`` is ``"hidden"`` (the layer's own stream: image or latent tokens, or the text
    itself in a text encoder), ``"context"`` (the text given as encoder hidden states),
    ``"ip"`` (image-prompt tokens) or ``"other"`` (a tensor that is not an input, e.g. learned
    tokens).
    """

    source: str
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        return cls(str(data["source"]), int(data["tokens"]))


@dataclass(frozen=True)
class Check:
    """A runtime monitor's verdict on one layer call (softmax axis, row sums, scale, ...)."""

    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
