"""How image size becomes tokens: the resolution levels of a journey, and where the common
tutorial table, (1, 320, 32, 32) -> (1, 1024, 320) with 8 heads of 40, holds.

Everything is read from the layers' recorded ``resolution`` and query shapes, never from
``sqrt(N)``, so non-square sizes and models without a grid come out right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shapetrace.journey import Journey, LayerRecord
from shapetrace.report._format import DASH, TIMES, block_of, channels, fmt_grid, heads_text
from shapetrace.report._summary import latent_grid

__all__ = ["Level", "block_columns", "levels", "resolution_lines", "tutorial_sentence"]

#: The common tutorial table's example: SD 1.5's 320-channel level on a 32×32 grid, 1024
#: tokens, 8 heads of 40 (what a 256×256 image gives).
SEED_CHANNELS = 320
SEED_GRID = (32, 32)


@dataclass
class Level:
    """The attention layers that share one grid and channel count."""

    index: int | None  # rank of the grid, largest first; None for layers without a grid
    grid: tuple[int, int] | None
    tokens: int | None
    channels: int
    heads: int
    head_dim: int
    blocks: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> block -> count

    @property
    def grid_text(self) -> str:
        return fmt_grid(self.grid)

    def blocks_text(self, kind: str) -> str:
        """``down_blocks.0 (2), up_blocks.3 (3)``, or a dash."""
        counts = self.blocks.get(kind, {})
        return ", ".join(f"{b} ({n})" for b, n in counts.items()) or DASH


def block_columns(found: list[Level]) -> list[tuple[str, str]]:
    """(header, kind) of the blocks columns: one column when every level's self layers sit
    in the same blocks as its cross layers (SD's UNet), else one per kind."""
    kinds = list(dict.fromkeys(k for lv in found for k in lv.blocks))
    if set(kinds) == {"cross", "self"} and all(
        lv.blocks.get("cross") == lv.blocks.get("self") for lv in found
    ):
        return [("layers (cross and self)", "cross")]
    ordered = [k for k in ("cross", "joint", "self") if k in kinds] + [
        k for k in kinds if k not in ("cross", "joint", "self")
    ]
    return [(f"{kind} layers", kind) for kind in ordered]


def _tokens(layer: LayerRecord) -> int | None:
    for name in ("query", "input"):
        if layer.has(name) and len(layer.shape(name)) == 3:
            return int(layer.shape(name)[1])
    return None


def levels(journey: Journey) -> list[Level]:
    """The journey's levels: largest grid first, then layers without a grid in call order.

    >>> [lv.grid for lv in levels(journey)]  # doctest: +SKIP
    [(64, 64), (32, 32), (16, 16), (8, 8)]
    """
    found: dict[tuple[object, ...], Level] = {}
    seen: set[str] = set()
    for layer in journey.layers:
        if layer.name in seen:
            continue
        seen.add(layer.name)
        tokens = _tokens(layer)
        grid = layer.resolution
        key = (grid, tokens if grid is None else None, channels(layer), layer.heads, layer.head_dim)
        level = found.get(key)
        if level is None:
            level = Level(None, grid, tokens, channels(layer), layer.heads, layer.head_dim)
            found[key] = level
        per_kind = level.blocks.setdefault(layer.kind, {})
        block = block_of(layer.name)
        per_kind[block] = per_kind.get(block, 0) + 1
    gridded = sorted(
        (lv for lv in found.values() if lv.grid is not None),
        key=lambda lv: (-(lv.grid[0] * lv.grid[1]) if lv.grid else 0, lv.channels, -lv.heads),
    )
    ranks = {g: i for i, g in enumerate(dict.fromkeys(lv.grid for lv in gridded))}
    for lv in gridded:
        lv.index = ranks[lv.grid]
    return gridded + [lv for lv in found.values() if lv.grid is None]


def _size(journey: Journey) -> str | None:
    if journey.height is None or journey.width is None:
        return None
    return f"{journey.height}{TIMES}{journey.width}"


def tutorial_sentence(journey: Journey, found: list[Level] | None = None) -> str:
    """Where the common tutorial table ((1, 320, 32, 32) → (1, 1024, 320)) holds.

    >>> tutorial_sentence(journey_512)  # doctest: +SKIP
    "The common tutorial table, (1, 320, 32, 32) → (1, 1024, 320), holds at 256×256; at
    512×512 the 320-channel level has 64×64 = 4096 tokens ..."
    """
    found = levels(journey) if found is None else found
    gridded = [lv for lv in found if lv.grid is not None]
    at_320 = [lv for lv in gridded if lv.channels == SEED_CHANNELS]
    seed_tokens = SEED_GRID[0] * SEED_GRID[1]
    if not at_320:
        widths = ", ".join(str(c) for c in dict.fromkeys(lv.channels for lv in found)) or DASH
        return (
            f"The common tutorial table, (1, 320, 32, 32) → (1, 1024, 320), follows SD 1.5's "
            f"{SEED_CHANNELS}-channel level on a {fmt_grid(SEED_GRID)} grid; this model has no "
            f"{SEED_CHANNELS}-channel attention level (its widths: {widths}), so read its own "
            "numbers above."
        )
    lv = at_320[0]
    assert lv.grid is not None
    gh, gw = lv.grid
    heads = heads_text(lv.heads, lv.head_dim)
    if lv.grid == SEED_GRID:
        return (
            f"The common tutorial table, (1, 320, 32, 32) → (1, 1024, 320), holds at this size: "
            f"the {SEED_CHANNELS}-channel level is (B, {SEED_CHANNELS}, {gh}, {gw}), "
            f"{gh}{TIMES}{gw} = {gh * gw} tokens, {heads}."
        )
    size = _size(journey)
    gives = ""
    H, W = journey.height, journey.width
    if H is not None and W is not None and H % gh == 0 and W % gw == 0:
        sh, sw = H // gh, W // gw
        gives = f" holds at {SEED_GRID[0] * sh}{TIMES}{SEED_GRID[1] * sw};"
    head = f"The common tutorial table, (1, 320, 32, 32) → (1, {seed_tokens}, 320),"
    if not gives:
        head = head.rstrip(",") + " is SD 1.5's first level at a smaller image;"
    where = f"at {size}" if size else "at the traced size"
    text = (
        f"{head}{gives} {where} the {SEED_CHANNELS}-channel level has "
        f"{gh}{TIMES}{gw} = {gh * gw} tokens ({heads})"
    )
    same_grid = [x for x in gridded if x.grid == SEED_GRID]
    if same_grid:
        chans = " and ".join(f"{x.channels}-channel" for x in same_grid)
        text += f", and the {fmt_grid(SEED_GRID)} grid ({seed_tokens} tokens) is the {chans} level"
    return text + "."


def resolution_lines(journey: Journey, found: list[Level] | None = None) -> list[str]:
    """The explainer's prose: image → latent → grids → tokens, then the tutorial table's place."""
    found = levels(journey) if found is None else found
    gridded = [lv for lv in found if lv.grid is not None]
    grids = list(dict.fromkeys(lv.grid for lv in gridded))
    lines = []
    chain = []
    size = _size(journey)
    if size:
        chain.append(f"image {size}")
    latent = latent_grid(journey)
    if latent is not None:
        (h, w), factor = latent
        chain.append(f"latent {h}{TIMES}{w} (÷{factor})")
    if grids:
        chain.append("attention grids " + ", ".join(fmt_grid(g) for g in grids))
        chain.append("tokens N = h·w: " + ", ".join(str(g[0] * g[1]) for g in grids if g))
    if chain:
        lines.append(" → ".join(chain))
    if any(lv.grid is None for lv in found):
        lines.append(f"Layers without an image grid (text or plain sequences) show {DASH}.")
    if gridded:
        lines.append(tutorial_sentence(journey, found))
    if journey.batch is not None and journey.batch != 1:
        lines.append(
            f"Batch {journey.batch}: every shape starts with {journey.batch} where the tutorial "
            "table has 1 (with classifier-free guidance, diffusers puts the unconditional rows "
            "first)."
        )
    return lines
