"""What each row of the model's batch is: unconditional or conditional, which prompt, which image.

diffusers builds a guided batch as [uncond rows..., cond rows...], each half prompt-major
([p0 i0, p0 i1, p1 i0, ...]). LEDITS++ builds [uncond, edit 1, ..., edit P] with one
unconditional row shared by every edit prompt (``shared_uncond=True``, ``prompt=-1``):

>>> [str(r) for r in batch_rows(2, shared_uncond=True)]
['row 0: uncond (shared) image 0', 'row 1: cond prompt 0 image 0', 'row 2: cond prompt 1 image 0']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shapetrace.errors import InputShapeError, ShapeTraceError

__all__ = [
    "BRANCHES", "SHARED", "RowLabel", "batch_rows", "check_rows", "kept", "position", "taker"
]

BRANCHES = ("uncond", "cond", "single")
SHARED = -1  # the prompt index of an unconditional row shared by every prompt


@dataclass(frozen=True)
class RowLabel:
    """What one row of the batch is: ``branch`` "uncond", "cond" or "single" (no CFG), the
    prompt index (``SHARED``, -1, for an unconditional row every prompt uses) and the image
    index within that prompt."""

    row: int
    branch: str
    prompt: int
    image: int

    def __str__(self) -> str:
        who = "(shared)" if self.prompt == SHARED else f"prompt {self.prompt}"
        return f"row {self.row}: {self.branch} {who} image {self.image}"


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputShapeError(
            f"{name}={value!r}: need a whole number >= 1 (how many the batch holds)"
        )
    return value


def batch_rows(
    prompts: int = 1,
    *,
    images_per_prompt: int = 1,
    guidance: bool = True,
    shared_uncond: bool = False,
) -> tuple[RowLabel, ...]:
    """Labels of the batch diffusers builds: with guidance [uncond..., cond...], prompt-major.

    ``shared_uncond`` (LEDITS++) puts one unconditional row per image first, shared by all
    prompts; it needs ``guidance``.

    >>> [r.branch for r in batch_rows(2, guidance=True)]
    ['uncond', 'uncond', 'cond', 'cond']
    """
    _count("prompts", prompts)
    _count("images_per_prompt", images_per_prompt)
    if not isinstance(guidance, bool) or not isinstance(shared_uncond, bool):
        raise InputShapeError(
            f"guidance={guidance!r}, shared_uncond={shared_uncond!r}: both are True or False"
        )
    if shared_uncond and not guidance:
        raise InputShapeError(
            "shared_uncond=True needs guidance=True: a shared unconditional row exists only "
            "under classifier-free guidance"
        )
    out: list[RowLabel] = []
    if shared_uncond:
        out += [RowLabel(i, "uncond", SHARED, i) for i in range(images_per_prompt)]
    branches = ("cond",) if shared_uncond else ("uncond", "cond") if guidance else ("single",)
    for branch in branches:
        for p in range(prompts):
            for i in range(images_per_prompt):
                out.append(RowLabel(len(out), branch, p, i))
    return tuple(out)


def check_rows(rows: object) -> tuple[RowLabel, ...]:
    """``rows`` as a tuple of RowLabel numbered 0, 1, ... in order, or an InputShapeError."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise InputShapeError(
            f"rows={rows!r}: pass a non-empty sequence of RowLabel, e.g. "
            "batch_rows(prompts, guidance=True), or build the store with "
            "AttentionStore.for_batch(prompts, guidance=...)"
        )
    out = tuple(rows)
    for i, r in enumerate(out):
        if not isinstance(r, RowLabel):
            raise InputShapeError(
                f"rows[{i}]={r!r} is not a RowLabel; build labels with batch_rows(...)"
            )
        if r.row != i or r.branch not in BRANCHES:
            raise InputShapeError(
                f"rows[{i}]={r}: rows must be numbered 0, 1, ... in batch order with branch "
                f"one of {', '.join(BRANCHES)}; build labels with batch_rows(...)"
            )
    return out


def kept(rows: Sequence[RowLabel], keep: str) -> tuple[RowLabel, ...]:
    """The rows a store keeps: all of them, or all but the unconditional ones."""
    if keep == "all":
        return tuple(rows)
    return tuple(r for r in rows if r.branch != "uncond")


def position(
    kept_rows: Sequence[RowLabel], select: int, *, image: int = 0, branch: str | None = None
) -> int:
    """Position among ``kept_rows`` of prompt ``select``'s row (image ``image``).

    ``branch`` None means "cond" (or "single" without guidance). A shared unconditional row
    answers for every prompt.
    """
    wanted = ("cond", "single") if branch is None else (branch,)
    for pos, r in enumerate(kept_rows):
        if r.branch in wanted and r.image == image and r.prompt in (select, SHARED):
            return pos
    have = "; ".join(str(r) for r in kept_rows) or "none"
    hint = " (build the store with keep='all' to keep them)" if branch == "uncond" else ""
    raise ShapeTraceError(
        f"no stored row for prompt {select}, image {image}, branch {'/'.join(wanted)}; "
        f"kept rows: {have}{hint}"
    )


def taker(rows: Sequence[RowLabel], device: torch.device, *, view: bool) -> torch.Tensor | slice:
    """How to take ``rows`` from a batch: a slice when they are consecutive and ``view`` is
    allowed (a view, no copy), else an index tensor on ``device``."""
    numbers = [r.row for r in rows]
    first = numbers[0] if numbers else 0
    if view and numbers == list(range(first, first + len(numbers))):
        return slice(first, first + len(numbers))
    return torch.tensor(numbers, device=device)
