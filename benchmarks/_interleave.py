"""Interleaved A/B sampling: ABBA order, so drift and neighbours' load hit both sides alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks._probes import timed

__all__ = ["interleave", "timings"]


def timings() -> dict[str, list[float]]:
    """An empty record of wall and CPU seconds."""
    return {"wall": [], "cpu": []}


def interleave(
    a: Callable[[], Any], b: Callable[[], Any], *, pairs: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run ``a`` and ``b`` ``warmup`` times each (not recorded), then ``pairs`` pairs in
    ABBA order; the wall and CPU seconds of each side, pair by pair."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = timings(), timings()
    for i in range(pairs):
        order = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        for fn, record in order:
            t, _ = timed(fn)
            record["wall"].append(t.wall)
            record["cpu"].append(t.cpu)
    return ta, tb
