"""Choosing which layers' journeys a report shows."""

from __future__ import annotations

from collections.abc import Sequence

from shapetrace._checks import shorten
from shapetrace.errors import ShapeTraceError
from shapetrace.journey import Journey, LayerRecord
from shapetrace.report._format import short_names

__all__ = ["choose_layers", "match_layers"]


def match_layers(journey: Journey, pattern: str) -> list[LayerRecord]:
    """The layer calls ``pattern`` names: an exact full or short name, else a substring of
    either. Raises :class:`ShapeTraceError` listing the short names when nothing matches.

    >>> [x.name for x in match_layers(journey, "down.0.0.attn2")]  # doctest: +SKIP
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn2']
    """
    short = short_names(layer.name for layer in journey.layers)
    exact = [x for x in journey.layers if pattern in (x.name, short[x.name])]
    if exact:
        return exact
    loose = [x for x in journey.layers if pattern in x.name or pattern in short[x.name]]
    if loose:
        return loose
    names = list(dict.fromkeys(short.values()))
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    raise ShapeTraceError(
        f"no traced attention layer matches {shorten(pattern)}; give a full or short name or a "
        f"part of one: {shown or 'none were traced'}"
    )


def choose_layers(
    journey: Journey,
    patterns: Sequence[str] = (),
    *,
    every: bool = False,
    kind: str | None = None,
) -> list[LayerRecord]:
    """The layers whose journeys to show, in call order, each once.

    ``every``: all layers (of ``kind`` if given). ``patterns``: the layers they match
    (see :func:`match_layers`). Neither: the first layer of ``kind`` (default the first
    cross-attention layer, or the first layer when there is none).

    >>> [x.name for x in choose_layers(journey, ["up.3"], kind="cross")]  # doctest: +SKIP
    ['up_blocks.3.attentions.0.transformer_blocks.0.attn2', ..., '...attentions.2...attn2']
    """
    pool = journey.layers if kind is None else journey.select(kind=kind)
    if kind is not None and not pool:
        raise ShapeTraceError(
            f"no {kind}-attention layer was traced; this journey has "
            f"{len(journey.cross)} cross, {len(journey.joint)} joint and "
            f"{len(journey.self_attention)} self layer calls"
        )
    if every:
        return list(pool)
    if patterns:
        wanted: list[LayerRecord] = []
        for pattern in patterns:
            for layer in match_layers(journey, pattern):
                if (kind is None or layer.kind == kind) and all(layer is not w for w in wanted):
                    wanted.append(layer)
        if not wanted:
            raise ShapeTraceError(
                f"layers {', '.join(map(shorten, patterns))} match no {kind}-attention layer"
            )
        order = {id(layer): i for i, layer in enumerate(journey.layers)}
        return sorted(wanted, key=lambda layer: order[id(layer)])
    if kind is not None:
        return list(pool[:1])
    return list(journey.cross[:1] or journey.layers[:1])
