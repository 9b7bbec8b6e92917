"""What a capture policy costs in memory, known before the run.

The store keeps one float32 running sum of (rows kept, h*w, M) per (place, kind, resolution):
flat in the number of steps. Each captured call also needs scratch for its scores and
probabilities, (B, H, N, M) float32 twice, freed after the call.

>>> est = estimate_memory(store, journey.layers, batch=2)         # doctest: +SKIP
>>> print(est)                                                     # doctest: +SKIP
capture: cross in down/mid/up, 1 of 2 rows; running sums 4.7 MiB in 7 maps (flat in steps); ...
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shapetrace.maps.store import AttentionStore, Key, batch_rows

__all__ = ["MemoryEstimate", "estimate_memory", "format_bytes"]

FLOAT32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of the running sums (``running``, per key in ``per_key``) and the largest
    per-call scratch (``scratch``); ``layers`` counts the layers the policy captures."""

    running: int
    scratch: int
    per_key: dict[Key, int]
    layers: int
    rows_kept: int
    batch: int
    policy: str

    def __str__(self) -> str:
        return (
            f"capture: {self.policy}, {self.rows_kept} of {self.batch} rows, {self.layers} layer "
            f"calls per UNet forward; running sums {format_bytes(self.running)} in "
            f"{len(self.per_key)} maps (flat in steps); scratch per call up to "
            f"{format_bytes(self.scratch)}"
        )


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
    except (AttributeError, KeyError, IndexError):
        return default


def estimate_memory(
    store: AttentionStore, layers: Iterable[Any], *, batch: int, context_tokens: int = 77
) -> MemoryEstimate:
    """Memory ``store`` will use on a forward whose attention calls are ``layers``.

    ``layers`` are ``LayerRecord``-like (``name``, ``kind``, ``place``, ``resolution``,
    ``heads``), e.g. a meta-device journey's layers for one forward. Bytes per kept key:
    h*w*M*rows_kept*4; scratch per call: 2*B*H*h*w*M*4.
    """
    rows = store.rows if store.rows is not None else batch_rows(batch, guidance=False)
    kept = len(rows) if store.keep == "all" else sum(r.branch != "uncond" for r in rows)
    per_key: dict[Key, int] = {}
    scratch = 0
    count = 0
    for layer in layers:
        if layer.resolution is None or not store.wants(layer):
            continue
        h, w = (int(x) for x in layer.resolution)
        m = _context_tokens(layer, h * w, context_tokens)
        count += 1
        per_key[(layer.place, layer.kind, (h, w))] = h * w * m * kept * FLOAT32
        scratch = max(scratch, 2 * batch * int(layer.heads) * h * w * m * FLOAT32)
    where = "/".join(store.places)
    res = (
        ""
        if store.resolutions is None
        else " at " + ", ".join(f"{h}x{w}" for h, w in sorted(store.resolutions))
    )
    return MemoryEstimate(
        running=sum(per_key.values()),
        scratch=scratch,
        per_key=per_key,
        layers=count,
        rows_kept=kept,
        batch=batch,
        policy=f"{'+'.join(store.kinds)} in {where}{res}",
    )
