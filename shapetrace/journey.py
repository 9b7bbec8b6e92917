"""The dimension journey: what one attention call did, stage by stage, and its JSON form.

Shapes are recorded in one normalized layout: token tensors (B, N|M, C), head tensors
(B, H, N|M, d), scores and probabilities (B, H, N, M). Where the code that ran used another
layout (diffusers' ``AttnProcessor`` folds heads into the batch, (B*H, N, d)), the stage keeps
that as ``raw_shape`` and ``layout``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shapetrace.errors import ShapeTraceError

__all__ = ["SCHEMA", "STAGE_ORDER", "Check", "Journey", "LayerRecord", "Stage"]

SCHEMA = "shapetrace.journey/1"

#: The stage names of the JSON contract, in the order a layer goes through them.
STAGE_ORDER: tuple[str, ...] = (
    "feature_map",
    "input",
    "context",
    "query",
    "key",
    "value",
    "query_heads",
    "key_heads",
    "value_heads",
    "scores",
    "probs",
    "attended",
    "merged",
    "output",
)

Shape = tuple[int, ...]


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
class Check:
    """A runtime monitor's verdict on one layer call (softmax axis, row sums, scale, ...)."""

    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerRecord:
    """One call of one attention layer."""

    name: str
    kind: str  # "cross" | "self"
    place: str  # "down" | "mid" | "up" | "text" | "model"
    resolution: tuple[int, int] | None
    processor: str
    heads: int
    head_dim: int
    stages: list[Stage] = field(default_factory=list)
    module_type: str = ""
    call: int = 0
    scale: float | None = None
    dtype: str = ""
    device: str = ""
    checks: list[Check] = field(default_factory=list)

    def stage(self, name: str) -> Stage:
        """The stage called ``name``; raises ``KeyError`` naming the stages there are."""
        for s in self.stages:
            if s.name == name:
                return s
        have = ", ".join(s.name for s in self.stages)
        raise KeyError(f"layer {self.name!r} has no stage {name!r}; it has: {have}")

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.stages)

    def shape(self, name: str) -> Shape:
        return self.stage(name).shape

    @property
    def tokens(self) -> int:
        """N, the number of query tokens."""
        return self.shape("query")[1]

    @property
    def context_tokens(self) -> int:
        """M, the number of key/value tokens."""
        return self.shape("key")[1]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "place": self.place,
            "resolution": list(self.resolution) if self.resolution else None,
            "processor": self.processor,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "module_type": self.module_type,
            "call": self.call,
            "scale": self.scale,
            "dtype": self.dtype,
            "device": self.device,
            "stages": [s.to_dict() for s in self.stages],
            "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerRecord:
        res = data.get("resolution")
        return cls(
            name=data["name"],
            kind=data["kind"],
            place=data["place"],
            resolution=(int(res[0]), int(res[1])) if res else None,
            processor=data.get("processor", ""),
            heads=int(data["heads"]),
            head_dim=int(data["head_dim"]),
            stages=[Stage.from_dict(s) for s in data.get("stages", [])],
            module_type=data.get("module_type", ""),
            call=int(data.get("call", 0)),
            scale=data.get("scale"),
            dtype=data.get("dtype", ""),
            device=data.get("device", ""),
            checks=[Check(**c) for c in data.get("checks", [])],
        )


@dataclass
class Journey:
    """Every attention call of one traced run, in call order.

    >>> with shapetrace.trace(unet) as journey:          # doctest: +SKIP
    ...     unet(latents, t, encoder_hidden_states=text)
    >>> journey.cross[0].shape("scores")                 # doctest: +SKIP
    (1, 8, 4096, 77)
    """

    layers: list[LayerRecord] = field(default_factory=list)
    model: str = ""
    height: int | None = None
    width: int | None = None
    batch: int | None = None
    device: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[LayerRecord]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def cross(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.kind == "cross"]

    @property
    def self_attention(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.kind == "self"]

    def select(
        self,
        *,
        kind: str | None = None,
        place: str | None = None,
        names: Sequence[str] | None = None,
        contains: str | None = None,
    ) -> list[LayerRecord]:
        """Layers filtered by kind, place, exact names or a substring of the name."""
        out = []
        for layer in self.layers:
            if kind is not None and layer.kind != kind:
                continue
            if place is not None and layer.place != place:
                continue
            if names is not None and layer.name not in names:
                continue
            if contains is not None and contains not in layer.name:
                continue
            out.append(layer)
        return out

    def layer(self, name: str, call: int = 0) -> LayerRecord:
        for layer in self.layers:
            if layer.name == name and layer.call == call:
                return layer
        raise KeyError(f"no traced call {call} of layer {name!r}; {len(self.layers)} calls traced")

    @property
    def violations(self) -> list[tuple[LayerRecord, Check]]:
        return [(layer, c) for layer in self.layers for c in layer.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "height": self.height,
            "width": self.width,
            "batch": self.batch,
            "device": self.device,
            "meta": self.meta,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Journey:
        if data.get("schema") != SCHEMA:
            raise ShapeTraceError(
                f"not a shapetrace journey: schema is {data.get('schema')!r}, expected {SCHEMA!r}"
            )
        return cls(
            layers=[LayerRecord.from_dict(x) for x in data["layers"]],
            model=data.get("model", ""),
            height=data.get("height"),
            width=data.get("width"),
            batch=data.get("batch"),
            device=data.get("device", ""),
            meta=data.get("meta", {}),
        )

    @classmethod
    def from_json(cls, text: str) -> Journey:
        return cls.from_dict(json.loads(text))
