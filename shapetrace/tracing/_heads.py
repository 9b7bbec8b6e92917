"""Per-head tensors as the code laid them out, and the one layout the journey records.

>>> heads_layout((16, 1024, 40), 1, batch=2, width=320, hint=8)
((2, 8, 1024, 40), '(B*H, T, d) batch-major', 8)
>>> heads_layout((4, 1024, 40), 1, batch=2, width=320, hint=8)[1]
'(B*H, T, d) batch-major, in slices of 4 rows'
>>> heads_layout((2, 4096, 24, 128), 1, batch=2, width=3072, hint=24)
((2, 24, 4096, 128), '(B, T, H, d)', 24)
"""

from __future__ import annotations

__all__ = ["heads_layout"]

Shape = tuple[int, ...]


def heads_layout(
    raw: Shape, seq_axis: int, batch: int, width: int | None, hint: int | None
) -> tuple[Shape, str, int | None]:
    """Map a per-head tensor's raw shape to (B, H, T, d); return (shape, layout, heads).

    ``seq_axis`` is where its tokens are (found by following the data, not by sizes),
    ``width`` the projection width H·d it came from, ``hint`` the head count the module
    declares. A 3-D tensor whose first axis is shorter than B·H is a slice of it (diffusers'
    sliced attention runs the (B*H) axis a few rows at a time).
    """
    raw = tuple(int(x) for x in raw)
    if len(raw) == 4 and seq_axis == 2:
        return raw, "(B, H, T, d)", raw[1]
    if len(raw) == 4 and seq_axis == 1:
        return (raw[0], raw[2], raw[1], raw[3]), "(B, T, H, d)", raw[2]
    if len(raw) == 3 and seq_axis == 1 and batch > 0:
        d = raw[2]
        heads = width // d if width and d and width % d == 0 else hint
        if heads is None and raw[0] % batch == 0:
            heads = raw[0] // batch
        if heads:
            shape = (batch, heads, raw[1], d)
            if raw[0] == batch * heads:
                layout = "(B*H, T, d) batch-major" if heads > 1 else "(B, T, d) one head"
                return shape, layout, heads
            if raw[0] < batch * heads:
                return shape, f"(B*H, T, d) batch-major, in slices of {raw[0]} rows", heads
    if len(raw) == 2 and seq_axis == 0:
        return (1, 1, *raw), "(T, d) one head, no batch", 1
    return raw, "unrecognized", hint
