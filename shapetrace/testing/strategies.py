"""Hypothesis strategies for attention shapes, and seeded tensors to go with them.

Hypothesis draws the *shapes* and a *seed*; the values come from a seeded
``torch.Generator``. Shrinking then works on the shapes (the part a human reads), while the
values stay reproducible from the seed.

Example::

    >>> from hypothesis import given
    >>> @given(attention_shapes(max_batch=2))
    ... def test_output_keeps_query_shape(shapes):
    ...     x = random_tensor((shapes.batch, shapes.query_tokens, shapes.query_dim), seed=1)
    ...     assert x.shape[-1] == shapes.query_dim
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st

from shapetrace.errors import InputShapeError

__all__ = [
    "ODD_SIZES",
    "AttentionShapes",
    "attention_shapes",
    "random_key_mask",
    "random_qkv",
    "random_tensor",
    "seeds",
    "sizes",
]

ODD_SIZES: tuple[int, ...] = (1, 3, 77, 203)
"""Sizes that break shape code in practice: a single token, an odd count, CLIP's 77 text
tokens, and an odd count above 77 (e.g. N=203 when a tutorial assumed N <= 77)."""

_MAX_SEED = 2**16 - 1


@dataclass(frozen=True)
class AttentionShapes:
    """The sizes of one cross-attention call, plus the seed its values come from.

    ``x`` is (batch, query_tokens, query_dim), ``context`` is (batch, context_tokens,
    context_dim), and q/k/v have ``inner_dim = heads * head_dim`` channels, split as
    (batch, heads, tokens, head_dim).
    """

    batch: int
    heads: int
    head_dim: int
    query_tokens: int
    context_tokens: int
    query_dim: int
    context_dim: int
    seed: int = 0

    @property
    def inner_dim(self) -> int:
        """Width of q, k and v: ``heads * head_dim``."""
        return self.heads * self.head_dim

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """One line in Hypothesis' falsifying examples (its printer would put a field a line)."""
        printer.text(repr(self))

    def describe(self) -> str:
        """One line with every size named, as failure messages print it.

        >>> AttentionShapes(2, 8, 40, 4096, 77, 320, 768).describe()
        'B=2, N=4096, M=77, query_dim=320, context_dim=768, heads=8, head_dim=40, seed=0'
        """
        return (
            f"B={self.batch}, N={self.query_tokens}, M={self.context_tokens}, "
            f"query_dim={self.query_dim}, context_dim={self.context_dim}, "
            f"heads={self.heads}, head_dim={self.head_dim}, seed={self.seed}"
        )


def _check_bounds(name: str, low: int, high: int, *, floor: int = 1) -> None:
    """Raise InputShapeError unless ``floor <= low <= high``, naming the bound and its values."""
    for which, value in (("min", low), ("max", high)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputShapeError(f"{which}_{name} must be an int, got {value!r}")
    if low < floor:
        raise InputShapeError(f"min_{name}={low} must be at least {floor}")
    if low > high:
        raise InputShapeError(
            f"min_{name}={low} is larger than max_{name}={high}; give min_{name} <= max_{name}"
        )


def sizes(
    *, min_size: int = 1, max_size: int = 80, odd_sizes: Sequence[int] = ODD_SIZES
) -> st.SearchStrategy[int]:
    """Sizes in ``[min_size, max_size]``, drawing the ``odd_sizes`` that fit more often.

    Defaults: ``min_size=1``, ``max_size=80``, ``odd_sizes=ODD_SIZES`` (1, 3, 77, 203).
    Shrinks towards ``min_size``.

    >>> from hypothesis import find
    >>> find(sizes(min_size=2, max_size=5), lambda n: n > 3)
    4
    """
    _check_bounds("size", min_size, max_size)
    plain = st.integers(min_size, max_size)
    fitting = sorted({s for s in odd_sizes if min_size <= s <= max_size})
    if not fitting:
        return plain
    return st.one_of(plain, st.sampled_from(fitting))


def seeds() -> st.SearchStrategy[int]:
    """Seeds for :func:`random_tensor`, ``0 .. 2**16 - 1``, shrinking towards 0."""
    return st.integers(0, _MAX_SEED)


def attention_shapes(
    *,
    min_batch: int = 1,
    max_batch: int = 3,
    min_heads: int = 1,
    max_heads: int = 4,
    min_head_dim: int = 1,
    max_head_dim: int = 16,
    min_query_tokens: int = 1,
    max_query_tokens: int = 80,
    min_context_tokens: int = 1,
    max_context_tokens: int = 80,
    min_context_dim: int = 1,
    max_context_dim: int = 64,
    min_query_dim: int | None = None,
    max_query_dim: int | None = None,
    distinct_tokens: bool = True,
) -> st.SearchStrategy[AttentionShapes]:
    """Shapes of a cross-attention call, with a seed for the values.

    Defaults: batch 1-3, heads 1-4, head_dim 1-16, query and context tokens 1-80 (odd sizes
    1, 3, 77 drawn more often), context_dim 1-64. ``query_dim`` is tied to
    ``heads * head_dim`` (seed 000's ``CrossAttention``, whose inner width is its query width)
    unless ``min_query_dim``/``max_query_dim`` are given, when it is drawn freely in that range
    (diffusers' ``Attention``, whose ``heads * dim_head`` need not equal ``query_dim``).
    ``distinct_tokens=True`` (default) keeps ``query_tokens != context_tokens``, so an axis
    mix-up between N and M cannot hide.

    >>> from hypothesis import find
    >>> find(attention_shapes(), lambda s: s.heads > 1).describe()  # the smallest such shapes
    'B=1, N=1, M=2, query_dim=2, context_dim=1, heads=2, head_dim=1, seed=0'

    """
    _check_bounds("batch", min_batch, max_batch)
    _check_bounds("heads", min_heads, max_heads)
    _check_bounds("head_dim", min_head_dim, max_head_dim)
    _check_bounds("query_tokens", min_query_tokens, max_query_tokens)
    _check_bounds("context_tokens", min_context_tokens, max_context_tokens)
    _check_bounds("context_dim", min_context_dim, max_context_dim)
    free_query_dim = min_query_dim is not None or max_query_dim is not None
    if free_query_dim:
        low = 1 if min_query_dim is None else min_query_dim
        high = max(low, 64) if max_query_dim is None else max_query_dim
        _check_bounds("query_dim", low, high)
    if distinct_tokens and (
        min_query_tokens == max_query_tokens == min_context_tokens == max_context_tokens
    ):
        raise InputShapeError(
            f"query and context tokens are both fixed at {min_query_tokens}, so they cannot "
            "differ; widen one range or pass distinct_tokens=False"
        )

    @st.composite
    def draw(data: st.DrawFn) -> AttentionShapes:
        heads = data(st.integers(min_heads, max_heads))
        head_dim = data(st.integers(min_head_dim, max_head_dim))
        query_tokens = data(sizes(min_size=min_query_tokens, max_size=max_query_tokens))
        context_tokens = data(sizes(min_size=min_context_tokens, max_size=max_context_tokens))
        if distinct_tokens and context_tokens == query_tokens:
            # Step to the nearest other count in range (keeps shrinking towards small sizes).
            step = 1 if context_tokens < max_context_tokens else -1
            if not min_context_tokens <= context_tokens + step <= max_context_tokens:
                query_tokens += 1 if query_tokens < max_query_tokens else -1
            else:
                context_tokens += step
        query_dim = heads * head_dim
        if free_query_dim:
            query_dim = data(st.integers(low, high))
        return AttentionShapes(
            batch=data(st.integers(min_batch, max_batch)),
            heads=heads,
            head_dim=head_dim,
            query_tokens=query_tokens,
            context_tokens=context_tokens,
            query_dim=query_dim,
            context_dim=data(st.integers(min_context_dim, max_context_dim)),
            seed=data(seeds()),
        )

    return draw()


def random_tensor(
    shape: Sequence[int],
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    scale: float = 1.0,
) -> torch.Tensor:
    """Standard normal values times ``scale``, from a CPU generator seeded with ``seed``.

    Values are drawn in float64 on the CPU and then cast, so the same seed gives the same
    numbers (up to rounding) on every device and dtype.

    >>> random_tensor((2, 3), seed=0).shape
    torch.Size([2, 3])
    >>> torch.equal(random_tensor((4,), seed=7), random_tensor((4,), seed=7))
    True
    """
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * scale
    return values.to(device=device, dtype=dtype)


def random_key_mask(
    batch: int,
    tokens: int,
    *,
    seed: int,
    keep_probability: float = 0.6,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A boolean key mask (batch, tokens), True = attend; every row keeps at least one key.

    >>> mask = random_key_mask(3, 5, seed=1)
    >>> mask.shape, bool(mask.any(dim=-1).all())
    (torch.Size([3, 5]), True)
    """
    if batch < 1 or tokens < 1:
        raise InputShapeError(f"a key mask needs batch >= 1 and tokens >= 1, got {batch}, {tokens}")
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand((batch, tokens), generator=generator) < keep_probability
    first = torch.randint(tokens, (batch,), generator=generator)
    keep[torch.arange(batch), first] = True
    return keep.to(device)


def random_qkv(
    shapes: AttentionShapes,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded split-head q (B, H, N, d), k and v (B, H, M, d) for ``shapes``.

    >>> q, k, v = random_qkv(AttentionShapes(2, 8, 40, 64, 77, 320, 768))
    >>> tuple(q.shape), tuple(k.shape)
    ((2, 8, 64, 40), (2, 8, 77, 40))
    """
    s = shapes
    base = s.seed * 1009
    q = random_tensor(
        (s.batch, s.heads, s.query_tokens, s.head_dim),
        seed=base,
        dtype=dtype,
        device=device,
        scale=scale,
    )
    k, v = (
        random_tensor(
            (s.batch, s.heads, s.context_tokens, s.head_dim),
            seed=base + i,
            dtype=dtype,
            device=device,
            scale=scale,
        )
        for i in (1, 2)
    )
    return q, k, v
