"""What a capture policy costs in memory, known before the run.

The store keeps one float32 running sum per key: (rows kept, h*w, M) per (place, kind, grid),
per layer with ``detail="layer"``, and H times that with ``detail="head"``: flat in the number
of steps. Each captured call also needs scratch for its scores and probabilities (two
(R, H, N, M) float32 tensors), freed after the call. With ``grad=True`` the autograd graph keeps,
per captured call, the probabilities and the selected rows of q and k (float32) until the
window closes; a materializing processor (``AttnProcessor``) already holds its probabilities,
so there the graph costs less than this estimate. A deferring store (the default) also holds
the q and k (their projection outputs, every row) of up to ``MAX_CALLS`` captured calls, and
at most ``BUDGET_BYTES`` of them, before it sums them (``held``).

>>> est = estimate_memory(store, journey.layers, batch=2)         # doctest: +SKIP
>>> print(est)                                                     # doctest: +SKIP
capture: cross+joint in down/mid/up, 1 of 2 rows, 16 layer calls per forward; running sums ...
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from shapetrace.maps._deferred import MAX_CALLS
from shapetrace.maps.rows import batch_rows, kept
from shapetrace.maps.store import AttentionStore, MapKey

__all__ = ["MemoryEstimate", "estimate_memory", "format_bytes"]

FLOAT32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of the running sums (``running``, per key in ``per_key``), the largest per-call
    scratch (``scratch``) and the autograd graph one forward leaves (``graph``, 0 without
    ``grad``); ``layers`` counts the calls the policy captures per forward."""

    running: int
    scratch: int
    per_key: dict[MapKey, int]
    layers: int
    rows_kept: int
    batch: int
    policy: str
    graph: int = 0
    window: str = "run"
    held: int = 0

    @property
    def peak(self) -> int:
        """Running sums + one forward's graph + one call's scratch + the q and k a deferring
        store holds: the most at once for a "forward" or "step" window of one forward."""
        return self.running + self.graph + self.scratch + self.held

    def __str__(self) -> str:
        text = (
            f"capture: {self.policy}, {self.rows_kept} of {self.batch} rows, {self.layers} layer "
            f"calls per forward; running sums {format_bytes(self.running)} in "
            f"{len(self.per_key)} maps (flat in steps); scratch per call up to "
            f"{format_bytes(self.scratch)}"
        )
        if self.graph:
            held = {
                "forward": "held until the next forward",
                "step": "held until the step ends, per forward in it",
                "run": "held for the whole run, per forward: it grows",
            }[self.window]
            text += f"; autograd graph up to {format_bytes(self.graph)} per forward ({held})"
        if self.held:
            text += f"; q and k held until summed up to {format_bytes(self.held)}"
        return text


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def _context_tokens(layer: Any, n: int, default: int) -> int:
    if layer.kind == "self":
        return n
    try:
        return int(layer.context_tokens)
    except (AttributeError, KeyError, IndexError, TypeError):
        return default


def _head_dim(layer: Any) -> int:
    try:
        return int(layer.head_dim or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def estimate_memory(
    store: AttentionStore, layers: Iterable[Any], *, batch: int, context_tokens: int = 77
) -> MemoryEstimate:
    """Memory ``store`` will use on a forward whose attention calls are ``layers``.

    ``layers`` are ``LayerRecord``-like (``name``, ``kind``, ``place``, ``resolution``,
    ``heads``, ``head_dim``), e.g. a meta-device journey's layers for one forward
    (``shapetrace.trace_model("sd15", height=512, width=512).layers``). Bytes per kept key:
    h*w*M*rows*4 (x heads with ``detail="head"``); scratch per call: 2*rows*H*h*w*M*4; graph
    per call with ``grad``: rows*H*(h*w*M + (h*w + M)*head_dim)*4; held when the store
    defers: batch*(h*w + M)*H*head_dim bytes of q and k per call in the layer's dtype, for
    the heaviest run of ``MAX_CALLS`` calls in the order of ``layers`` (the store sums after
    each such run and when the forward ends), at most the budget plus one call.
    """
    rows = store.rows if store.rows is not None else batch_rows(batch, guidance=False)
    r = len(kept(rows, store.keep))
    per_key: dict[MapKey, int] = {}
    scratch = graph = count = biggest = 0
    calls: list[int] = []  # bytes each captured call holds until summed, in call order
    for layer in layers:
        if layer.resolution is None or not store.selects(layer):
            continue
        h, w = (int(x) for x in layer.resolution)
        n, heads = h * w, int(layer.heads)
        m = _context_tokens(layer, n, context_tokens)
        count += 1
        name = "" if store.detail == "resolution" else str(layer.name)
        key = MapKey(layer.place, layer.kind, (h, w), name)
        per_key[key] = n * m * r * FLOAT32 * (heads if store.detail == "head" else 1)
        scratch = max(scratch, 2 * r * heads * n * m * FLOAT32)
        if store.grad:
            graph += r * heads * (n * m + (n + m) * _head_dim(layer)) * FLOAT32
        if store.defer:
            calls.append(batch * (n + m) * heads * _head_dim(layer) * _itemsize(layer))
            biggest = max(biggest, calls[-1])
    where = "/".join(store.places)
    res = (
        ""
        if store.resolutions is None
        else " at " + ", ".join(f"{h}x{w}" for h, w in sorted(store.resolutions))
    )
    extras = [f"per {store.detail}"] if store.detail != "resolution" else []
    extras += [f"window {store.window}"] + (["with gradients"] if store.grad else [])
    policy = f"{'+'.join(store.kinds)} in {where}{res} ({', '.join(extras)})"
    return MemoryEstimate(
        running=sum(per_key.values()),
        scratch=scratch,
        per_key=per_key,
        layers=count,
        rows_kept=r,
        batch=batch,
        policy=policy,
        graph=graph,
        window=store.window,
        held=min(_heaviest_run(calls), store.budget_bytes + biggest),
    )


def _heaviest_run(calls: list[int]) -> int:
    """The most bytes held at once when the calls are summed ``MAX_CALLS`` at a time."""
    runs = [sum(calls[i : i + MAX_CALLS]) for i in range(0, len(calls), MAX_CALLS)]
    return max(runs, default=0)


def _itemsize(layer: Any) -> int:
    dtype = getattr(torch, str(getattr(layer, "dtype", "") or "float32"), torch.float32)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else FLOAT32
