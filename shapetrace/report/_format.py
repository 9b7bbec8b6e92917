"""Shared formatting for every report: shapes, symbolic layouts, grids and short layer names.

>>> fmt_shape((1, 8, 1024, 77))
'(1, 8, 1024, 77)'
>>> symbolic("scores", 4)
'(B, H, N, M)'
>>> short_name("down_blocks.0.attentions.0.transformer_blocks.0.attn2")
'down.0.0.attn2'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from shapetrace.journey import LayerRecord, Stage
from shapetrace.stages import stage_spec

__all__ = [
    "DASH",
    "TIMES",
    "block_of",
    "channels",
    "fmt_grid",
    "fmt_shape",
    "heads_text",
    "maybe_shape",
    "short_name",
    "short_names",
    "simple_table_width",
    "symbolic",
    "width_of",
]

DASH = "—"
TIMES = "×"

#: Stages whose token axes hold every token of a joint layer (image and text): N+M there.
_JOINT_TOKENS = frozenset(
    {"query_heads", "key_heads", "value_heads", "scores", "probs", "attended", "merged"}
)


_SHORTEN: tuple[tuple[str, str], ...] = (
    (r"(^|\.)down_blocks\.", r"\1down."),
    (r"(^|\.)up_blocks\.", r"\1up."),
    (r"(^|\.)mid_block\.", r"\1mid."),
    (r"\.attentions\.", "."),
    (r"(^|\.)transformer_blocks\.0\.", r"\1"),
    (r"(^|\.)transformer_blocks\.(\d+)\.", r"\1t\2."),
)


def fmt_shape(shape: Sequence[int]) -> str:
    """A shape as Python prints a tuple: ``(1, 1024, 320)``, ``(5,)``, ``()``."""
    return str(tuple(int(x) for x in shape))


def maybe_shape(layer: LayerRecord, name: str) -> str:
    """The shape of stage ``name`` of ``layer``, or a dash when the layer has no such stage."""
    return fmt_shape(layer.shape(name)) if layer.has(name) else DASH


def symbolic(name: str, ndim: int, *, joint: bool = False) -> str:
    """The symbolic layout of a stage from the stage registry, e.g. ``(B, H, N, d)``; in a
    joint layer the token axes that hold image and text together read ``N+M``. A dash for
    stages the registry does not know or when the recorded rank differs.

    >>> symbolic("scores", 4), symbolic("scores", 4, joint=True)
    ('(B, H, N, M)', '(B, H, N+M, N+M)')
    """
    if name in ("input", "output") and ndim == 4:
        name = "feature_map"
    spec = stage_spec(name)
    if spec is None or spec.layout.count(",") + 1 != ndim:
        return DASH
    if joint and name in _JOINT_TOKENS:
        return spec.layout.replace("N", "N+M").replace(", M", ", N+M")
    return spec.layout


def fmt_grid(resolution: Sequence[int] | None) -> str:
    """``64×96`` for a (h, w) grid, a dash when the layer has none (e.g. text attention)."""
    if not resolution:
        return DASH
    h, w = resolution
    return f"{h}{TIMES}{w}"


def short_name(name: str) -> str:
    """A diffusers module path shortened for tables; other names come back unchanged.

    >>> short_name("mid_block.attentions.0.transformer_blocks.0.attn1")
    'mid.0.attn1'
    >>> short_name("up_blocks.1.attentions.2.transformer_blocks.3.attn2")
    'up.1.2.t3.attn2'
    """
    out = name
    for pattern, repl in _SHORTEN:
        out = re.sub(pattern, repl, out)
    return out


def short_names(names: Iterable[str]) -> dict[str, str]:
    """Full name -> short name, keeping the full name wherever two would shorten alike."""
    full = list(dict.fromkeys(names))
    short = {n: short_name(n) for n in full}
    counts: dict[str, int] = {}
    for s in short.values():
        counts[s] = counts.get(s, 0) + 1
    return {n: (s if counts[s] == 1 else n) for n, s in short.items()}


def block_of(name: str) -> str:
    """The block a layer sits in: ``down_blocks.0`` for ``down_blocks.0.attentions.1...``.

    Elsewhere, the path up to the first numbered part (``text_encoder.layers`` for
    ``text_encoder.layers.3.self_attn``); names without one are their own block.
    """
    head, sep, _ = name.partition(".attentions.")
    if sep:
        return head
    numbered = re.match(r"^(.+?)\.\d+(\.|$)", name)
    return numbered.group(1) if numbered else name


def heads_text(heads: int, head_dim: int) -> str:
    """``8 heads of 40``, ``1 head of 768``."""
    return f"{heads} head{'s' if heads != 1 else ''} of {head_dim}"


def simple_table_width(widths: Sequence[int]) -> int:
    """The width of a rich ``SIMPLE_HEAD`` table whose columns are ``widths`` wide: one space
    of padding either side of each, a divider between columns and one at each edge."""
    return sum(w + 2 for w in widths) + max(len(widths) - 1, 0) + 2


def width_of(stage: Stage) -> int:
    """The last axis of a stage's shape (channels of a token tensor)."""
    return int(stage.shape[-1]) if stage.shape else 0


def channels(layer: LayerRecord) -> int:
    """The image-side channels of a layer: the feature map's C when recorded, else the width
    of the layer's input tokens (``(B, N, C)``), else its query width."""
    if layer.has("feature_map") and len(layer.shape("feature_map")) == 4:
        return int(layer.shape("feature_map")[1])
    for name in ("input", "query"):
        if layer.has(name):
            return width_of(layer.stage(name))
    return layer.heads * layer.head_dim
