"""Where attention implementations branch, as sizes to draw, and the cost of one forward.

Real code takes other paths at sizes like these: fused kernels want head dims that are
multiples of 8; tiled kernels and chunked loops split at multiples of 64 and powers of two,
leaving a short last tile one past them; tutorials assume CLIP's 77 text tokens (SD 2 and
SDXL prompts run to 154 and 231; T5 to 512); memory-saving paths switch on past 1024 or 4096
image tokens. :func:`narrow` keeps a drawn call inside a budget of multiply-adds by thinning
widths, never the token counts, so long sequences stay cheap.

Example::

    >>> [n for n in TOKEN_SIZES if 60 <= n <= 80]
    [63, 64, 65, 76, 77, 78]
    >>> forward_cost(1, 8, 40, 4096, 77, 320, 768)   # one SD 1.5 level-0 cross-attention call
    1078558720
"""

from __future__ import annotations

__all__ = [
    "CLIP_TOKENS",
    "HEAD_COUNTS",
    "HEAD_DIMS",
    "LONG_TOKENS",
    "TOKEN_SIZES",
    "fitting",
    "forward_cost",
    "narrow",
]

_POWERS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

TOKEN_SIZES: tuple[int, ...] = tuple(
    sorted(
        {1, 2, 3, 76, 77, 78, 154, 203, 231, 8192} | {p + d for p in _POWERS for d in (-1, 0, 1)}
    )
)
"""Token counts where code branches: 1 and 3, powers of two and their neighbours, CLIP's 77
and its multiples, an odd count above 77 (203)."""

CLIP_TOKENS: tuple[int, ...] = (76, 77, 78, 154, 231, 512)
"""Context lengths around text encoders' limits: one below, at and above 77, SD 2 / SDXL
long prompts (2 and 3 chunks of 77) and T5's 512."""

HEAD_DIMS: tuple[int, ...] = (1, 2, 3, 5, 7, 8, 16, 32, 40, 63, 64, 65, 80, 128, 160)
"""Head widths: unaligned (odd), aligned to 8 (fused kernels), SD's 40, 80 and 160, 64 and
128 (SD 2, SDXL, SD3, Flux) and their neighbours."""

HEAD_COUNTS: tuple[int, ...] = (1, 2, 3, 5, 8, 16, 24)
"""Head counts: one (heads folded away), a few, SD's 8, SD 2's 5, 16 and 24 (SD3)."""

LONG_TOKENS = 1024
"""Above this many query tokens a sequence counts as long (SD's 64x64 latent has 4096)."""


def fitting(values: tuple[int, ...], low: int, high: int) -> list[int]:
    """The ``values`` in ``[low, high]``, sorted.

    >>> fitting(HEAD_COUNTS, 2, 8)
    [2, 3, 5, 8]
    """
    return sorted(v for v in set(values) if low <= v <= high)


def forward_cost(
    batch: int,
    heads: int,
    head_dim: int,
    query_tokens: int,
    context_tokens: int,
    query_dim: int,
    context_dim: int,
) -> int:
    """Multiply-adds of one cross-attention forward: four projections, q kᵀ and probs v."""
    inner = heads * head_dim
    projections = 2 * query_tokens * query_dim * inner + 2 * context_tokens * context_dim * inner
    attention = 2 * heads * query_tokens * context_tokens * head_dim
    return batch * (projections + attention)


def narrow(
    sizes: dict[str, int], *, max_cost: int, floors: dict[str, int], tied_query_dim: bool
) -> dict[str, int]:
    """``sizes`` (the keyword fields of ``AttentionShapes``) thinned until one forward costs at
    most ``max_cost`` multiply-adds. In order, each step repeated while it helps: batch to one
    row, context and query widths halved, heads halved down to two, head width down to two
    (one hides every scale bug), then heads and head width down to one; never below the
    ``floors``. Token counts are kept, and several heads of several channels as long as
    possible. When ``tied_query_dim`` the query width stays ``heads * head_dim``.

    >>> s = dict(batch=2, heads=8, head_dim=64, query_tokens=4096, context_tokens=77,
    ...          query_dim=512, context_dim=64)
    >>> out = narrow(s, max_cost=2**22, floors={}, tied_query_dim=True)
    >>> out["batch"], out["heads"], out["head_dim"], out["query_tokens"]
    (1, 2, 2, 4096)
    """
    s = dict(sizes)
    steps = (
        ("batch", floors.get("batch", 1)),
        ("context_dim", floors.get("context_dim", 1)),
        ("query_dim", floors.get("query_dim", 1)),
        ("heads", max(2, floors.get("heads", 1))),
        ("head_dim", max(2, floors.get("head_dim", 1))),  # d=1 hides every scale bug
        ("heads", floors.get("heads", 1)),
        ("head_dim", floors.get("head_dim", 1)),
    )

    def cost() -> int:
        return forward_cost(
            s["batch"],
            s["heads"],
            s["head_dim"],
            s["query_tokens"],
            s["context_tokens"],
            s["query_dim"],
            s["context_dim"],
        )

    for name, floor in steps:
        if name == "query_dim" and tied_query_dim:
            continue
        while cost() > max_cost and s[name] > floor:
            s[name] = floor if name == "batch" else max(floor, (s[name] + 1) // 2)
            if tied_query_dim:
                s["query_dim"] = s["heads"] * s["head_dim"]
    return s
