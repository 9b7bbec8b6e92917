"""The dimension journey: what each attention call did, stage by stage, and its JSON form.

Shapes are recorded in one normalized layout (see ``shapetrace.stages``): token tensors
(B, N|M, C), head tensors (B, H, N|M, d), scores and probabilities (B, H, N, M). Where the code
that ran used another layout (diffusers' ``AttnProcessor`` folds heads into the batch,
(B*H, N, d)), the stage keeps that as ``raw_shape`` and ``layout``.

A layer's ``kind`` says where its keys came from: ``self`` (its own tokens), ``cross`` (other
tokens, e.g. text) or ``joint`` (one softmax over its own tokens and the text's, as in SD3,
Flux and added-KV UNets). ``segments`` give the token runs of queries and keys in the model's
own order; ``branches`` hold a layer's further attention computations (an IP-Adapter's
image-prompt attention).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shapetrace.errors import ShapeTraceError
from shapetrace.stages import STAGE_ORDER, Check, Segment, Stage

__all__ = [
    "CROSS_KINDS",
    "SCHEMA",
    "STAGE_ORDER",
    "Branch",
    "Check",
    "Journey",
    "LayerRecord",
    "NotUnderstood",
    "Segment",
    "Stage",
]

SCHEMA = "shapetrace.journey/1"
#: Kinds whose queries attend to text: their image-query x text-key block is a cross map.
CROSS_KINDS = ("cross", "joint")

Shape = tuple[int, ...]


def _stage(stages: Sequence[Stage], owner: str, name: str) -> Stage:
    for s in stages:
        if s.name == name:
            return s
    have = ", ".join(s.name for s in stages)
    raise KeyError(f"{owner} has no stage {name!r}; it has: {have}")


def _segments_to_dict(segments: dict[str, tuple[Segment, ...]]) -> dict[str, Any]:
    return {axis: [s.to_dict() for s in segs] for axis, segs in segments.items()}


def _segments_from_dict(data: dict[str, Any] | None) -> dict[str, tuple[Segment, ...]]:
    return {axis: tuple(Segment.from_dict(s) for s in segs) for axis, segs in (data or {}).items()}


@dataclass
class Branch:
    """A further attention computation inside one layer call, with its own keys and values:
    an IP-Adapter's attention over image-prompt tokens is branch ``"ip"`` beside the text's."""

    name: str
    kind: str
    stages: list[Stage] = field(default_factory=list)
    segments: dict[str, tuple[Segment, ...]] = field(default_factory=dict)
    scale: float | None = None

    def stage(self, name: str) -> Stage:
        return _stage(self.stages, f"branch {self.name!r}", name)

    def shape(self, name: str) -> Shape:
        return self.stage(name).shape

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "scale": self.scale,
            "segments": _segments_to_dict(self.segments),
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Branch:
        return cls(
            name=data["name"],
            kind=data["kind"],
            stages=[Stage.from_dict(s) for s in data.get("stages", [])],
            segments=_segments_from_dict(data.get("segments")),
            scale=data.get("scale"),
        )


@dataclass
class LayerRecord:
    """The journey of one attention layer at one input signature: ``calls`` counts the calls
    it stands for (the first, ``call``, recorded op by op; later ones of the same signature
    take the same path), ``checked`` how many of them the runtime checks looked at.
    ``trace(..., every_call=True)`` gives one record per call instead."""

    name: str
    kind: str  # "self" | "cross" | "joint"
    place: str  # "down" | "mid" | "up" | "transformer" | "single" | "text" | "model"
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
    segments: dict[str, tuple[Segment, ...]] = field(default_factory=dict)
    branches: list[Branch] = field(default_factory=list)
    calls: int = 1
    checked: int = 1

    def stage(self, name: str) -> Stage:
        """The stage called ``name``; raises ``KeyError`` naming the stages there are."""
        return _stage(self.stages, f"layer {self.name!r}", name)

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.stages)

    def shape(self, name: str) -> Shape:
        return self.stage(name).shape

    def branch(self, name: str) -> Branch:
        for b in self.branches:
            if b.name == name:
                return b
        have = ", ".join(b.name for b in self.branches) or "none"
        raise KeyError(f"layer {self.name!r} has no branch {name!r}; branches: {have}")

    def _count(self, axis: str, sources: tuple[str, ...]) -> int | None:
        segs = self.segments.get(axis)
        if not segs:
            return None
        return sum(s.tokens for s in segs if s.source in sources)

    @property
    def tokens(self) -> int:
        """N, the number of the layer's own query tokens (image tokens in joint attention)."""
        own = self._count("query", ("hidden",))
        return own if own else self.shape("query")[1]

    @property
    def context_tokens(self) -> int:
        """M, the number of key tokens from the text (all key tokens in self-attention)."""
        text = self._count("key", ("context",))
        if text:
            return text
        keys = self._count("key", ("hidden", "context", "ip", "other"))
        return keys if keys else self.shape("key")[1]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "place": self.place,
            "resolution": list(self.resolution) if self.resolution else None,
            "processor": self.processor,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "module_type": self.module_type,
            "call": self.call,
            "calls": self.calls,
            "checked": self.checked,
            "scale": self.scale,
            "dtype": self.dtype,
            "device": self.device,
            "segments": _segments_to_dict(self.segments),
            "stages": [s.to_dict() for s in self.stages],
            "checks": [c.to_dict() for c in self.checks],
        }
        if self.branches:
            out["branches"] = [b.to_dict() for b in self.branches]
        return out

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
            segments=_segments_from_dict(data.get("segments")),
            branches=[Branch.from_dict(b) for b in data.get("branches", [])],
            calls=int(data.get("calls", 1)),
            checked=int(data.get("checked", 1)),
        )


@dataclass(frozen=True)
class NotUnderstood:
    """A layer shapetrace hooked but could not read as attention, and why. It is listed here
    instead of being given a guessed label."""

    name: str
    module_type: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module_type": self.module_type, "reason": self.reason}


@dataclass
class Journey:
    """Every attention call of one traced run, in call order.

    >>> with shapetrace.trace(unet) as journey:          # doctest: +SKIP
    ...     unet(latents, t, encoder_hidden_states=text)
    >>> journey.cross[0].shape("scores")                 # doctest: +SKIP
    (1, 8, 4096, 77)

    ``not_understood`` lists the layers that ran but could not be read as attention (for
    example attention computed inside an op shapetrace cannot see), by name and reason.
    ``skipped`` counts calls left out on purpose: ``other_threads`` (the model run by another
    thread during the trace) and ``recomputes`` (gradient checkpointing re-running forwards
    during backward).
    """

    layers: list[LayerRecord] = field(default_factory=list)
    model: str = ""
    height: int | None = None
    width: int | None = None
    batch: int | None = None
    device: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    not_understood: list[NotUnderstood] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[LayerRecord]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def cross(self) -> list[LayerRecord]:
        """Layers whose queries attend to text: ``cross`` and ``joint`` kinds."""
        return [layer for layer in self.layers if layer.kind in CROSS_KINDS]

    @property
    def joint(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.kind == "joint"]

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
        """Layers filtered by kind (``"cross"`` includes joint), place, exact names or a
        substring of the name."""
        out = []
        for layer in self.layers:
            if kind is not None and not _kind_matches(layer.kind, kind):
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
            "skipped": dict(self.skipped),
            "not_understood": [n.to_dict() for n in self.not_understood],
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

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
            not_understood=[NotUnderstood(**n) for n in data.get("not_understood", [])],
            skipped={str(k): int(v) for k, v in data.get("skipped", {}).items()},
        )

    @classmethod
    def from_json(cls, text: str) -> Journey:
        return cls.from_dict(json.loads(text))


def _kind_matches(kind: str, wanted: str) -> bool:
    return kind == wanted or (wanted == "cross" and kind in CROSS_KINDS)
