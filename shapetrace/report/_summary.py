"""What the header and the per-layer summary say, as plain strings both renderers share."""

from __future__ import annotations

from dataclasses import dataclass

from shapetrace.journey import Journey, LayerRecord
from shapetrace.report._format import (
    DASH,
    TIMES,
    fmt_grid,
    fmt_shape,
    maybe_shape,
    short_names,
)

__all__ = [
    "SummaryRow",
    "context_shape",
    "header_facts",
    "latent_grid",
    "layer_count",
    "summary_rows",
]


@dataclass(frozen=True)
class SummaryRow:
    """One row of the layer table; every cell already a string."""

    index: int
    name: str
    full_name: str
    kind: str
    place: str
    grid: str
    tokens: str
    context: str
    width: str
    heads: str
    scores: str
    processor: str
    check: bool | None  # None when the layer carries no checks


def _dim(layer: LayerRecord, stage: str, axis: int) -> str:
    if not layer.has(stage):
        return DASH
    try:
        return str(layer.shape(stage)[axis])
    except IndexError:
        return DASH


def _context(layer: LayerRecord) -> str:
    """M: the text tokens of a cross or joint layer, the keys of a self layer."""
    try:
        return str(layer.context_tokens)
    except KeyError:
        return DASH


def summary_rows(journey: Journey, layers: list[LayerRecord] | None = None) -> list[SummaryRow]:
    """One :class:`SummaryRow` per layer call (all of the journey's unless ``layers`` given).

    Names are shortened (``down.0.0.attn2``) where that stays unambiguous; a call after the
    first is marked ``(call k)``.
    """
    chosen = journey.layers if layers is None else layers
    short = short_names(layer.name for layer in journey.layers)
    rows = []
    for i, layer in enumerate(chosen, start=1):
        name = short.get(layer.name, layer.name)
        if layer.call:
            name += f" (call {layer.call})"
        scores = maybe_shape(layer, "scores")
        if scores == DASH and layer.has("probs"):
            scores = maybe_shape(layer, "probs")
        rows.append(
            SummaryRow(
                index=i,
                name=name,
                full_name=layer.name,
                kind=layer.kind,
                place=layer.place,
                grid=fmt_grid(layer.resolution),
                tokens=_dim(layer, "query", 1),
                context=_context(layer),
                width=_dim(layer, "query", -1),
                heads=f"{layer.heads}{TIMES}{layer.head_dim}",
                scores=scores,
                processor=layer.processor or DASH,
                check=layer.ok if layer.checks else None,
            )
        )
    return rows


def layer_count(journey: Journey) -> str:
    """``32 attention layers: 16 self, 16 cross`` (distinct layers; calls added if more)."""
    kinds: dict[str, str] = {}
    for layer in journey.layers:
        kinds.setdefault(layer.name, layer.kind)
    n = len(kinds)
    present = [k for k in ("self", "cross", "joint") if k in kinds.values()]
    present += sorted({k for k in kinds.values() if k not in present})
    parts = [f"{sum(k == kind for k in kinds.values())} {kind}" for kind in present]
    text = f"{n} attention layer{'s' if n != 1 else ''}: {', '.join(parts)}"
    if len(journey.layers) > n:
        text += f" ({len(journey.layers)} calls)"
    return text


def latent_grid(journey: Journey) -> tuple[tuple[int, int], int] | None:
    """The latent (h, w) and the image-to-latent factor, or None when the size is unknown.

    Uses ``journey.meta["latent"]`` / ``["vae_scale_factor"]`` when the tracer set them,
    else SD's factor 8.
    """
    factor = int(journey.meta.get("vae_scale_factor", 8))
    latent = journey.meta.get("latent")
    if latent:
        return (int(latent[0]), int(latent[1])), factor
    if journey.height is None or journey.width is None or factor <= 0:
        return None
    return (journey.height // factor, journey.width // factor), factor


def header_facts(journey: Journey) -> list[tuple[str, str]]:
    """(label, value) pairs for the report header, in display order.

    >>> header_facts(Journey(model="sd15", height=512, width=512, batch=1))[:2]
    [('model', 'sd15'), ('image H×W', '512×512')]
    """
    size = (
        f"{journey.height}{TIMES}{journey.width}"
        if journey.height is not None and journey.width is not None
        else DASH
    )
    facts = [("model", journey.model or DASH), (f"image H{TIMES}W", size)]
    facts.append(("batch", str(journey.batch) if journey.batch is not None else DASH))
    facts.append(("device", journey.device or DASH))
    dtypes = sorted({layer.dtype for layer in journey.layers if layer.dtype})
    if dtypes:
        facts.append(("dtype", ", ".join(dtypes)))
    latent = latent_grid(journey)
    if latent is not None:
        (h, w), factor = latent
        facts.append(("latent", f"{h}{TIMES}{w} (image ÷ {factor})"))
    else:
        facts.append(("latent", DASH))
    facts.append(("attention", layer_count(journey)))
    context = context_shape(journey)
    if context != DASH:
        facts.append(("context", context))
    processors = sorted({layer.processor for layer in journey.layers if layer.processor})
    if processors:
        facts.append(("processor", ", ".join(processors)))
    if journey.not_understood:
        count = len(journey.not_understood)
        names = ", ".join(n.name for n in journey.not_understood[:3])
        more = f" and {count - 3} more" if count > 3 else ""
        facts.append(("not understood", f"{count}: {names}{more}"))
    skipped = {"other_threads": "calls from other threads", "recomputes": "checkpoint recomputes"}
    for key, count in journey.skipped.items():
        facts.append(("left out", f"{count} {skipped.get(key, key)}"))
    return facts


def context_shape(journey: Journey) -> str:
    """The context (text) shape the first cross layer saw, or a dash."""
    for layer in journey.cross:
        if layer.has("context"):
            return fmt_shape(layer.shape("context"))
    return DASH
