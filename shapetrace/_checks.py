"""Checks of the values users pass, shared by the CLI, the API, model loading and testing.

Each check takes the value and the ``name`` to blame: the CLI passes its flag (``"--height"``),
the API the argument (``"height"``). It returns the value in the form the caller needs, or
raises one error type per condition, with the name, the value (shortened) and the fix:

>>> check_size(512, 768)
(512, 768)
>>> check_size(500, 512, names=("--height", "--width"))
Traceback (most recent call last):
shapetrace.errors.InputShapeError: --height 500 is not divisible by 8; ... use 496 or 504
>>> check_dtype("fp16")
torch.float16

Sizes and batches raise :class:`InputShapeError`; every other value :class:`SettingError`.
torch is imported only by the checks that need it, so the CLI checks its flags quickly.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from shapetrace.errors import InputShapeError, SettingError, ShapeTraceError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_TYPES",
    "DTYPES",
    "MAX_SIDE",
    "blame",
    "check_batch",
    "check_choice",
    "check_device",
    "check_dtype",
    "check_fits",
    "check_int",
    "check_number",
    "check_prompt",
    "check_seed",
    "check_side",
    "check_size",
    "check_steps",
    "format_bytes",
    "shorten",
    "show",
]

#: The largest image side accepted, in pixels (a 2048x2048 latent; SD-class models run at 2048
#: and below). Past it the attention scores of one layer exceed what torch can index.
MAX_SIDE = 16384
#: Attention scores (batch x tokens x tokens per head, times up to 64 heads) must stay below
#: the 2**63 elements a tensor can hold.
_MAX_SCORES = 2**56
#: Device types shapetrace runs on.
DEVICE_TYPES = ("meta", "cpu", "cuda")
#: dtype spellings accepted, each to the torch dtype's name.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}


def shorten(value: object, limit: int = 60) -> str:
    """``repr(value)`` for a message, cut in the middle past ``limit`` characters.

    >>> shorten("x" * 10_000, 20)
    "'xxxxxxx…xxxxxxx' (10,000 characters)"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    half = max(1, (limit - 3) // 2)
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[:half]}…{text[-half:]}{size}"


_PLAIN = re.compile(r"[\w.,/:@+=~%-]+")


def show(value: object, limit: int = 120) -> str:
    """A user's text (a path, a model name) for a message, literally: bare when it is one
    plain word, quoted when it is empty or holds spaces, quotes or brackets; cut in the
    middle past ``limit`` characters.

    >>> show("maps/run1"), show("run[v2]"), show("")
    ('maps/run1', "'run[v2]'", "''")
    """
    text = str(value)
    if _PLAIN.fullmatch(text) and len(text) <= limit:
        return text
    return shorten(text, limit)


def format_bytes(n: float) -> str:
    """Bytes in binary units: ``1536 -> '1.5 KiB'``, ``65536000000000 -> '59.6 TiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def check_int(
    value: object,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    fix: str = "",
    error: type[ShapeTraceError] = SettingError,
) -> int:
    """``value`` as an int within [minimum, maximum]; ``error`` naming ``name`` otherwise.

    >>> check_int(3, "steps", minimum=1)
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(
            f"{name} must be a whole number, got {shorten(value)} ({type(value).__name__})"
            f"{'; ' + fix if fix else ''}"
        )
    number = int(value)
    if minimum is not None and number < minimum:
        raise error(f"{name} {number} must be >= {minimum}{'; ' + fix if fix else ''}")
    if maximum is not None and number > maximum:
        raise error(f"{name} {number:,} is more than {maximum:,}{'; ' + fix if fix else ''}")
    return number


def check_side(value: object, name: str = "height", *, factor: int = 8) -> int:
    """One image side as an int: a positive multiple of ``factor`` (the VAE's 8), at most
    :data:`MAX_SIDE`. Raises :class:`InputShapeError` naming the side and the nearest sizes.

    >>> check_side(768, "--width")
    768
    """
    v = check_int(value, name, error=InputShapeError, fix="pass an int, e.g. 512")
    what = name.lstrip("-")
    if v <= 0:
        raise InputShapeError(
            f"{name} {v} must be positive; SD latents are {what}/{factor}, so use a positive "
            f"multiple of {factor}, e.g. 512"
        )
    if v > MAX_SIDE:
        raise InputShapeError(
            f"{name} {v:,} is larger than {MAX_SIDE} pixels, the most shapetrace traces (a "
            f"{MAX_SIDE // factor}x{MAX_SIDE // factor} latent); SD-class models run at 256 "
            "to 2048"
        )
    if v % factor:
        low, high = v - v % factor, v - v % factor + factor
        fix = f"use {low} or {high}" if low > 0 else f"use {high}"
        raise InputShapeError(
            f"{name} {v} is not divisible by {factor}; SD latents are {what}/{factor} — {fix}"
        )
    return v


def check_size(
    height: object,
    width: object,
    *,
    names: tuple[str, str] = ("height", "width"),
    factor: int = 8,
) -> tuple[int, int]:
    """Height and width, each checked by :func:`check_side`.

    >>> check_size(256, 384)
    (256, 384)
    """
    return (
        check_side(height, names[0], factor=factor),
        check_side(width, names[1], factor=factor),
    )


def check_batch(batch: object, name: str = "batch", *, tokens: int | None = None) -> int:
    """The batch size as an int >= 1. With ``tokens`` (the largest attention's token count),
    also refuse a batch whose scores, batch x tokens², no tensor can index.

    >>> check_batch(2)
    2
    """
    b = check_int(batch, name, error=InputShapeError, fix="pass an int, e.g. 1")
    if b < 1:
        raise InputShapeError(
            f"{name} {b} must be >= 1; use 1, or 2 for classifier-free guidance (uncond + cond)"
        )
    if tokens is not None and b * tokens * tokens > _MAX_SCORES:
        most = max(1, _MAX_SCORES // (tokens * tokens))
        raise InputShapeError(
            f"{name} {b:,} with {tokens:,} image tokens makes attention scores of "
            f"{b * tokens * tokens:.2e} elements per head, beyond what torch indexes; "
            f"use {name} {most:,} or less, or a smaller image"
        )
    return b


def check_number(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    fix: str = "",
) -> float:
    """A finite real number within [minimum, maximum], as a float; SettingError otherwise.

    >>> check_number(7.5, "guidance", minimum=0)
    7.5
    """
    tail = f"; {fix}" if fix else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingError(f"{name} must be a number, got {shorten(value)}{tail}")
    number = float(value)
    if not math.isfinite(number):
        raise SettingError(f"{name} {number} is not a finite number{tail}")
    if minimum is not None and number < minimum:
        raise SettingError(f"{name} {number:g} must be >= {minimum:g}{tail}")
    if maximum is not None and number > maximum:
        raise SettingError(f"{name} {number:g} must be <= {maximum:g}{tail}")
    return number


def check_steps(steps: object, name: str = "steps", *, train_steps: int = 1000) -> int:
    """Denoising steps: from 1 to the scheduler's ``num_train_timesteps`` (past it the
    schedule repeats timesteps). SettingError otherwise.

    >>> check_steps(50)
    50
    """
    fix = f"SD runs 20 to 50 steps; the scheduler has {train_steps} timesteps in all"
    return check_int(steps, name, minimum=1, maximum=train_steps, fix=fix)


def check_seed(seed: object, name: str = "seed") -> int:
    """A seed from 0 to 2**63 - 1 (-1 means "random" in other tools; runs here repeat).

    >>> check_seed(0)
    0
    """
    fix = "use a whole number from 0 to 2**63 - 1 (the same seed gives the same run)"
    return check_int(seed, name, minimum=0, maximum=2**63 - 1, fix=fix)


def check_prompt(prompt: object, name: str = "prompt") -> str:
    """A prompt with at least one word. SettingError otherwise.

    >>> check_prompt("a cat")
    'a cat'
    """
    if not isinstance(prompt, str):
        raise SettingError(f"{name} must be text, got {shorten(prompt)} ({type(prompt).__name__})")
    if not prompt.split():
        raise SettingError(
            f"{name} {shorten(prompt)} has no words; give the text to map, e.g. "
            f"{name} 'a cat sitting on a mat'"
        )
    return prompt


def check_choice(value: object, name: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; SettingError listing them otherwise.

    >>> check_choice("cross", "kind", ("cross", "self"))
    'cross'
    """
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise SettingError(f"{name} {shorten(value)} is not one of {', '.join(options)}")
    return value


def check_device(
    value: object, name: str = "device", *, allow: Sequence[str] = DEVICE_TYPES
) -> torch.device:
    """A ``torch.device`` from a string (any case) or a device, of a type in ``allow``; CUDA
    must be there and the index must exist. SettingError otherwise.

    >>> check_device("CPU")
    device(type='cpu')
    """
    import torch

    where = ", ".join(allow)
    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, str):
        try:
            device = torch.device(value.strip().lower())
        except (RuntimeError, ValueError):
            raise SettingError(f"{name} {show(value)} is not a device; use {where}") from None
    else:
        raise SettingError(
            f"{name} must be a str or torch.device, got {shorten(value)} "
            f"({type(value).__name__}); use {where}"
        )
    if device.type not in allow:
        raise SettingError(f"{name} {show(value)}: shapetrace runs here on {where}")
    if device.type != "cuda":
        if device.index not in (None, 0):
            raise SettingError(f"{name} {device} has no index; use {device.type}")
        return torch.device(device.type)
    if not torch.cuda.is_available():
        raise SettingError(
            f"{name} {show(value)}: torch sees no CUDA device (torch "
            f"{torch.__version__}); use {' or '.join(a for a in allow if a != 'cuda')}, "
            "or install a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise SettingError(
            f"{name} {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


def check_dtype(
    value: object,
    name: str = "dtype",
    *,
    allow: Sequence[str] = ("float32", "float16", "bfloat16", "float64"),
) -> torch.dtype:
    """A floating ``torch.dtype`` from a dtype or a name (``"float16"``, ``"fp16"``,
    ``"torch.bfloat16"``, ...), one of ``allow``. SettingError otherwise.

    >>> check_dtype("bf16")
    torch.bfloat16
    """
    import torch

    choices = ", ".join(allow)
    if isinstance(value, torch.dtype):
        key = str(value).removeprefix("torch.")
    elif isinstance(value, str):
        key = DTYPES.get(value.strip().lower().removeprefix("torch."), "")
    else:
        raise SettingError(
            f"{name} must be a torch.dtype or its name, got {shorten(value)} "
            f"({type(value).__name__}); use one of {choices}"
        )
    if key not in allow:
        raise SettingError(f"{name} {show(value)} is not one of {choices}")
    dtype: torch.dtype = getattr(torch, key)
    return dtype


def check_fits(need: int, have: int | None, *, what: str, fix: str) -> None:
    """Refuse a run that needs more bytes than are available (``have`` None: no limit known).

    >>> check_fits(2**30, 2**34, what="sd15 on cpu", fix="use --device meta")
    """
    if have is not None and need > have:
        raise SettingError(
            f"{what} needs about {format_bytes(need)} but {format_bytes(have)} is available; {fix}"
        )


@contextmanager
def blame(prefix: str, *kinds: type[ShapeTraceError]) -> Iterator[None]:
    """Put ``prefix`` (the flag and value a step works from) in front of the message of an
    error of ``kinds`` raised inside, keeping its type; a message that starts with the flag
    already is left alone.

    >>> with blame("--model ./x", SettingError):
    ...     raise SettingError("no config.json")
    Traceback (most recent call last):
    shapetrace.errors.SettingError: --model ./x: no config.json
    """
    try:
        yield
    except kinds as err:
        flag = prefix.split(" ", 1)[0]
        if not prefix or str(err).startswith(flag):
            raise
        raise type(err)(f"{prefix}: {err}") from err
