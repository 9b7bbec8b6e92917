"""Every setting of an ``AttentionStore``, checked before the first forward.

Each refusal is an ``InputShapeError`` naming the argument, the value and the fix, so
``AttentionStore(places=["middle"], resolutions=[0, -16])`` fails at construction, not as an
empty store after an hour of denoising.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Literal

from shapetrace.errors import InputShapeError

__all__ = [
    "ALL_PLACES",
    "DEFAULT_KINDS",
    "DEFAULT_PLACES",
    "DETAILS",
    "KINDS",
    "WINDOWS",
    "Detail",
    "Resolution",
    "Window",
    "as_res",
    "check_choice",
    "check_flag",
    "check_names",
    "check_resolutions",
]

Resolution = tuple[int, int]
Window = Literal["run", "step", "forward"]
Detail = Literal["resolution", "layer", "head"]

#: UNet places, then transformer blocks (DiT/MMDiT), Flux single-stream blocks, text encoders
#: and anything else.
ALL_PLACES = ("down", "mid", "up", "transformer", "single", "text", "model")
#: The places whose layers see an image grid (text encoders have none).
DEFAULT_PLACES = ("down", "mid", "up", "transformer", "single", "model")
#: "joint" is SD3/Flux attention, whose image-query x text-key block is cross-attention.
KINDS = ("cross", "self", "joint")
DEFAULT_KINDS = ("cross", "joint")
WINDOWS = ("run", "step", "forward")
DETAILS = ("resolution", "layer", "head")

_ALIASES = {"middle": "mid", "mid_block": "mid", "down_blocks": "down", "up_blocks": "up"}


def _suggest(value: str, choices: Iterable[str]) -> str:
    if value in _ALIASES:
        return f" (did you mean {_ALIASES[value]!r}?)"
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_names(name: str, value: object, choices: tuple[str, ...]) -> tuple[str, ...]:
    """A non-empty collection of names from ``choices`` (one string counts as one name)."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Iterable):
        raise InputShapeError(
            f"{name}={value!r}: pass names from {', '.join(choices)}, e.g. {name}={choices[:2]}"
        )
    out = tuple(items)
    if not out:
        raise InputShapeError(
            f"{name}=(): an empty {name} keeps nothing; leave {name} out for the default or "
            f"pass some of {', '.join(choices)}"
        )
    for item in out:
        if not isinstance(item, str) or item not in choices:
            hint = _suggest(item, choices) if isinstance(item, str) else ""
            raise InputShapeError(
                f"{name}={list(out)!r}: {item!r} is not one of {', '.join(choices)}{hint}"
            )
    return tuple(dict.fromkeys(out))


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        hint = _suggest(value, choices) if isinstance(value, str) else ""
        raise InputShapeError(
            f"{name}={value!r}: {name} is one of {', '.join(repr(c) for c in choices)}{hint}"
        )
    return value


def check_flag(name: str, value: object) -> bool:
    """True or False (not 0, 1 or "yes")."""
    if not isinstance(value, bool):
        raise InputShapeError(f"{name}={value!r}: {name} is True or False")
    return value


def _side(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def as_res(res: object, *, name: str = "res") -> Resolution:
    """An int side or an (h, w) pair of positive ints as (h, w)."""
    if isinstance(res, int) and not isinstance(res, bool):
        side = _side(res)
        if side is not None:
            return (side, side)
    elif isinstance(res, (tuple, list)) and len(res) == 2:
        h, w = _side(res[0]), _side(res[1])
        if h is not None and w is not None:
            return (h, w)
    raise InputShapeError(
        f"{name}={res!r}: a map resolution is a side >= 1 or an (h, w) pair of them, e.g. "
        "16 or (16, 24); it is the layer's grid (latent 64x64 at 512 px: 64, 32, 16, 8)"
    )


def check_resolutions(value: object) -> frozenset[Resolution] | None:
    """None (every grid) or a non-empty collection of sides / (h, w) pairs."""
    if value is None:
        return None
    if isinstance(value, (int, str, bytes)) or not isinstance(value, Iterable):
        raise InputShapeError(
            f"resolutions={value!r}: pass a list of sides or (h, w) pairs, e.g. "
            "resolutions=[16] or [(16, 24)], or None for every grid"
        )
    items = list(value)
    if not items:
        raise InputShapeError(
            "resolutions=[]: an empty list keeps no map; pass None to keep every grid"
        )
    out = set()
    for item in items:
        try:
            out.add(as_res(item, name="resolutions"))
        except InputShapeError:
            raise InputShapeError(
                f"resolutions={items!r}: {item!r} is not a grid; each entry is a side >= 1 "
                "or an (h, w) pair of them, e.g. [16, (16, 24)]"
            ) from None
    return frozenset(out)
