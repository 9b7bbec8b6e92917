"""Where the token axes go through reshapes, permutations, indexing, splits and concatenation.

A span is the [start, stop) of the axes that hold the tokens. A reshape keeps a span when the
elements before it and the tokens themselves still line up with whole axes:

>>> map_reshape((2, 4096, 320), (2, 4096, 8, 40), (1, 2))
(1, 2)
>>> map_reshape((2, 320, 64, 64), (2, 320, 4096), (2, 4))
(2, 3)
>>> map_permute((1, 2), (0, 2, 1, 3))
(2, 3)
>>> slice_segments((Segment("hidden", 4096), Segment("context", 333)), 0, 4096)
(Segment(source='hidden', tokens=4096),)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from shapetrace.stages import Segment
from shapetrace.tracing._flow import Span

__all__ = [
    "cat_segments",
    "map_getitem",
    "map_permute",
    "map_reshape",
    "map_same",
    "piece_bounds",
    "slice_segments",
]

Shape = tuple[int, ...]


def map_reshape(old: Shape, new: Shape, span: Span) -> Span | None:
    """The span after a reshape from ``old`` to ``new``, or None when the tokens were merged
    with another axis or split in a way that no longer lines up."""
    a, b = span
    prefix, tokens = math.prod(old[:a]), math.prod(old[a:b])
    if prefix == 0 or tokens == 0:
        return None
    starts = [i for i in range(len(new)) if math.prod(new[:i]) == prefix]
    for i in reversed(starts):  # leading axes of size 1 belong before the tokens
        size = 1
        for j in range(i, len(new)):
            size *= new[j]
            if size == tokens:
                return (i, j + 1)
            if size > tokens:
                break
    return None


def map_permute(span: Span, perm: Sequence[int]) -> Span | None:
    """The span after ``permute(perm)``, when its axes stay next to each other in order."""
    ndim = len(perm)
    where = {int(old) % ndim: new for new, old in enumerate(perm)}
    moved = [where[axis] for axis in range(*span)]
    if moved != list(range(moved[0], moved[0] + len(moved))):
        return None
    return (moved[0], moved[-1] + 1)


def swap_perm(ndim: int, d0: int, d1: int) -> list[int]:
    perm = list(range(ndim))
    d0, d1 = d0 % ndim, d1 % ndim
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return perm


def move_perm(ndim: int, source: int, destination: int) -> list[int]:
    order = [d for d in range(ndim) if d != source % ndim]
    order.insert(destination % ndim, source % ndim)
    return order


def map_same(old: Shape, new: Shape, span: Span) -> Span | None:
    """The span through an op that keeps the token axes in place: elementwise ops (with
    broadcasting, which adds leading axes), norms, reductions over other axes."""
    a, b = span
    offset = len(new) - len(old)
    if offset < 0 or a + offset < 0:
        return None
    if tuple(new[a + offset : b + offset]) != tuple(old[a:b]):
        return None
    return (a + offset, b + offset)


def slice_segments(segments: tuple[Segment, ...], start: int, stop: int) -> tuple[Segment, ...]:
    """The segments of tokens [start, stop)."""
    out: list[Segment] = []
    at = 0
    for seg in segments:
        lo, hi = max(start, at), min(stop, at + seg.tokens)
        if hi > lo:
            out.append(Segment(seg.source, hi - lo))
        at += seg.tokens
    return tuple(out)


def cat_segments(parts: Sequence[tuple[Segment, ...]]) -> tuple[Segment, ...]:
    """Segments of a concatenation, neighbours of the same source joined."""
    out: list[Segment] = []
    for part in parts:
        for seg in part:
            if out and out[-1].source == seg.source:
                out[-1] = Segment(seg.source, out[-1].tokens + seg.tokens)
            else:
                out.append(seg)
    return tuple(out)


def piece_bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) of consecutive pieces of the given sizes."""
    bounds, at = [], 0
    for size in sizes:
        bounds.append((at, at + int(size)))
        at += int(size)
    return bounds


def map_getitem(
    shape: Shape, index: Any, span: Span
) -> tuple[Span | None, tuple[int, int] | None, tuple[int, int] | None]:
    """Indexing with ints, slices, None and Ellipsis.

    Returns (new span, token range kept or None when the tokens were not sliced, range kept of
    axis 0 or None). A span is lost (None) for advanced indexing or a stepped token slice.
    """
    items = index if isinstance(index, tuple) else (index,)
    if any(not isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items):
        return None, None, None
    if any(isinstance(i, bool) for i in items):
        return None, None, None
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = (*items[:at], *([slice(None)] * (len(shape) - used)), *items[at + 1 :])
    items = (*items, *([slice(None)] * (len(shape) - used)))
    new_pos: dict[int, int] = {}
    kept_tokens = kept_rows = None
    dim = out = 0
    for item in items:
        if item is None:
            out += 1
            continue
        if isinstance(item, int):
            if span[0] <= dim < span[1]:
                return None, None, None
            dim += 1
            continue
        start, stop, step = item.indices(shape[dim])
        if (start, stop) != (0, shape[dim]) or step != 1:
            if span[0] <= dim < span[1]:
                if step != 1 or span[1] - span[0] != 1:
                    return None, None, None
                kept_tokens = (start, max(start, stop))
            elif dim == 0:
                kept_rows = (start, max(start, stop))
        new_pos[dim] = out
        dim += 1
        out += 1
    new_span = (new_pos[span[0]], new_pos[span[1] - 1] + 1)
    return new_span, kept_tokens, kept_rows
