"""The attention store: a tracer probe that keeps running sums of attention probabilities.

Prompt-to-prompt keeps a list of maps per step and per layer; this store keeps one running sum
per (place, kind, resolution) and a count of the head maps added, so memory stays flat in the
number of steps. Batch rows are labelled: under classifier-free guidance the UNet's batch is
[uncond rows..., cond rows...], each half ordered prompt-major ([p0 i0, p0 i1, p1 i0, ...]) as
diffusers builds it, and only the conditional rows are kept unless asked.

>>> store = AttentionStore.for_batch(prompts=1, guidance=True)     # rows: uncond, cond
>>> with shapetrace.trace(unet, probes=[store], monitors=False):  # doctest: +SKIP
...     unet(latents2, t, encoder_hidden_states=text2)               # batch 2
>>> store.aggregate(16, select=0).shape                            # doctest: +SKIP
torch.Size([16, 16, 77])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from shapetrace.errors import InputShapeError, ShapeTraceError

__all__ = ["AttentionStore", "MapSum", "RowLabel", "batch_rows"]

Resolution = tuple[int, int]
Key = tuple[str, str, Resolution]  # (place, kind, (h, w))
PLACES = ("down", "mid", "up")


class _Layer(Protocol):
    name: str
    kind: str
    place: str
    resolution: tuple[int, int] | None
    heads: int


class _Call(Protocol):
    layer: Any
    query_heads: torch.Tensor
    key_heads: torch.Tensor
    probs: torch.Tensor | None

    def compute_probs(
        self, dtype: torch.dtype = ..., rows: torch.Tensor | None = ...
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class RowLabel:
    """What one row of the UNet's batch is: ``branch`` "uncond", "cond" or "single" (no CFG),
    the prompt index and the image index within that prompt."""

    row: int
    branch: str
    prompt: int
    image: int

    def __str__(self) -> str:
        return f"row {self.row}: {self.branch} prompt {self.prompt} image {self.image}"


def batch_rows(
    prompts: int = 1, *, images_per_prompt: int = 1, guidance: bool = True
) -> tuple[RowLabel, ...]:
    """Labels of the batch diffusers builds: with guidance [uncond..., cond...], prompt-major.

    >>> [r.branch for r in batch_rows(2, guidance=True)]
    ['uncond', 'uncond', 'cond', 'cond']
    """
    if prompts < 1 or images_per_prompt < 1:
        raise InputShapeError(
            f"need at least one prompt and one image, got prompts={prompts}, "
            f"images_per_prompt={images_per_prompt}"
        )
    branches = ("uncond", "cond") if guidance else ("single",)
    out: list[RowLabel] = []
    for branch in branches:
        for p in range(prompts):
            for i in range(images_per_prompt):
                out.append(RowLabel(len(out), branch, p, i))
    return tuple(out)


@dataclass
class MapSum:
    """Running sum of head-summed probabilities for one (place, kind, resolution).

    ``total`` is (rows kept, h*w, M) float32; ``count`` the number of head maps added (calls x
    heads), so ``total / count`` is the mean over heads, layers and steps. ``layers`` names
    the layers that contributed.
    """

    total: torch.Tensor
    count: int = 0
    calls: int = 0
    layers: set[str] = field(default_factory=set)

    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)


class AttentionStore:
    """A probe for ``shapetrace.trace`` that accumulates attention maps.

    Rows: ``for_batch(P, guidance=True)`` labels the batch [uncond x P, cond x P]; then
    ``aggregate(res, select=i)`` is prompt i's conditional row, never an unconditional one,
    and a forward whose batch differs from the labels is refused naming the layer.

    Args:
        rows: labels of the UNet's batch rows (see ``batch_rows``); None labels each row
            "single" with prompt = row (no guidance).
        kinds: which attention kinds to keep, default ("cross",).
        places: which UNet places, default ("down", "mid", "up").
        resolutions: keep only these (h, w) (or int side) resolutions; None keeps all.
        keep: "cond" keeps conditional (and "single") rows only, as prompt-to-prompt does;
            "all" keeps every row.
    """

    def __init__(
        self,
        *,
        rows: Sequence[RowLabel] | None = None,
        kinds: Iterable[str] = ("cross",),
        places: Iterable[str] = PLACES,
        resolutions: Iterable[int | Resolution] | None = None,
        keep: Literal["cond", "all"] = "cond",
    ) -> None:
        self.kinds = tuple(kinds)
        self.places = tuple(places)
        bad = [k for k in self.kinds if k not in ("cross", "self")]
        if bad:
            raise InputShapeError(f"kinds must be 'cross' or 'self', got {bad}")
        self.resolutions = (
            None if resolutions is None else frozenset(_as_res(r) for r in resolutions)
        )
        if keep not in ("cond", "all"):
            raise InputShapeError(f"keep must be 'cond' or 'all', got {keep!r}")
        self.keep = keep
        self.rows: tuple[RowLabel, ...] | None = tuple(rows) if rows is not None else None
        self.entries: dict[Key, MapSum] = {}
        self.errors: list[Exception] = []
        self.steps = 0

    @classmethod
    def for_batch(
        cls, prompts: int = 1, *, images_per_prompt: int = 1, guidance: bool = True, **kwargs: Any
    ) -> AttentionStore:
        """A store whose rows are labelled for ``prompts`` prompts, with or without CFG."""
        rows = batch_rows(prompts, images_per_prompt=images_per_prompt, guidance=guidance)
        return cls(rows=rows, **kwargs)

    # -- the probe protocol ---------------------------------------------------------------
    def wants(self, layer: _Layer) -> bool:
        """Whether the store keeps maps of ``layer`` (kind, place and resolution filters)."""
        if layer.kind not in self.kinds or layer.place not in self.places:
            return False
        if self.resolutions is None:
            return True
        return layer.resolution is not None and tuple(layer.resolution) in self.resolutions

    def on_attention(self, call: _Call) -> None:
        """Add one call's probabilities, (B, H, N, M) summed over heads, to its running sum.

        An error is raised and also kept: ``check()`` (called by ``end_step`` and
        ``aggregate``) raises it again, so a tracer that shields the forward from probe
        errors cannot turn it into a silently empty store.
        """
        try:
            self._add(call)
        except Exception as err:
            self.errors.append(err)
            raise

    def check(self) -> None:
        """Raise the first error a call raised in this store, if any."""
        if self.errors:
            raise self.errors[0]

    def _add(self, call: _Call) -> None:
        layer = call.layer
        if not self.wants(layer):
            return
        b, heads, n, _ = call.query_heads.shape
        m = call.key_heads.shape[2]
        if layer.resolution is None:
            raise ShapeTraceError(
                f"layer {layer.name!r} has no resolution (query {tuple(call.query_heads.shape)}); "
                "the store needs the layer's (h, w) from its feature map"
            )
        h, w = (int(x) for x in layer.resolution)
        if h * w != n:
            raise ShapeTraceError(
                f"layer {layer.name!r}: resolution {h}x{w} has {h * w} pixels but the query "
                f"has N={n} tokens (query_heads {tuple(call.query_heads.shape)})"
            )
        kept = self._kept_rows(b, layer.name)
        with torch.no_grad():
            index = torch.tensor([r.row for r in kept], device=call.query_heads.device)
            probs = call.compute_probs(torch.float32, rows=index)  # only the kept rows
            if tuple(probs.shape) != (len(kept), heads, n, m):
                raise ShapeTraceError(
                    f"layer {layer.name!r}: probabilities {tuple(probs.shape)} for rows "
                    f"{index.tolist()}, expected (R, H, N, M) = {(len(kept), heads, n, m)}"
                )
            summed = probs.sum(dim=1)  # (R, N, M)
            key: Key = (layer.place, layer.kind, (h, w))
            entry = self.entries.get(key)
            if entry is None:
                entry = MapSum(total=torch.zeros_like(summed))
                self.entries[key] = entry
            elif entry.total.shape != summed.shape:
                raise ShapeTraceError(
                    f"layer {layer.name!r}: maps {tuple(summed.shape)} do not match the "
                    f"{tuple(entry.total.shape)} already stored for {key}; the context length "
                    "or batch changed mid-run: call store.reset() between runs"
                )
            entry.total += summed
        entry.count += heads
        entry.calls += 1
        entry.layers.add(layer.name)

    # -- bookkeeping ---------------------------------------------------------------------
    def _kept_rows(self, batch: int, layer_name: str) -> tuple[RowLabel, ...]:
        if self.rows is None:  # unlabelled: every row is its own prompt, no guidance
            self.rows = batch_rows(batch, guidance=False)
        rows = self.rows
        if len(rows) != batch:
            branches = sorted({r.branch for r in rows})
            raise InputShapeError(
                f"layer {layer_name!r} got batch {batch} but the store was told {len(rows)} "
                f"rows ({', '.join(branches)}); build it with AttentionStore.for_batch(prompts, "
                "guidance=...) matching the UNet's batch"
            )
        if self.keep == "all":
            return rows
        return tuple(r for r in rows if r.branch != "uncond")

    @property
    def kept_rows(self) -> tuple[RowLabel, ...]:
        """Labels of the rows the running sums hold, in their order (needs known rows)."""
        if self.rows is None:
            raise ShapeTraceError("the store's rows are not labelled yet; no call has been seen")
        return self._kept_rows(len(self.rows), "")

    def row_position(self, select: int, *, image: int = 0, branch: str | None = None) -> int:
        """Position, among the kept rows, of prompt ``select``'s conditional row.

        ``branch`` None means "cond" (or "single" without guidance); "uncond" needs keep="all".
        """
        kept = self.kept_rows
        wanted = ("cond", "single") if branch is None else (branch,)
        for pos, r in enumerate(kept):
            if r.prompt == select and r.image == image and r.branch in wanted:
                return pos
        have = "; ".join(str(r) for r in kept) or "none"
        raise ShapeTraceError(
            f"no stored row for prompt {select}, image {image}, branch {'/'.join(wanted)}; "
            f"kept rows: {have}"
        )

    def end_step(self) -> None:
        """Mark the end of one denoising step (counted for reports; sums are already running).

        Raises the error of a failed call, if one failed during the step.
        """
        self.check()
        self.steps += 1

    def reset(self) -> None:
        """Forget every stored map and error (the filters and row labels stay)."""
        self.entries.clear()
        self.errors.clear()
        self.steps = 0

    def available(self) -> dict[tuple[str, str], list[Resolution]]:
        """Resolutions stored per (place, kind), e.g. {("up", "cross"): [(16, 16), (32, 32)]}."""
        out: dict[tuple[str, str], list[Resolution]] = {}
        for place, kind, res in self.entries:
            out.setdefault((place, kind), []).append(res)
        return {k: sorted(v) for k, v in out.items()}

    def nbytes(self) -> int:
        """Bytes the running sums hold now."""
        return sum(e.total.numel() * e.total.element_size() for e in self.entries.values())

    def aggregate(
        self,
        res: int | Resolution,
        from_where: Sequence[str] = ("up", "down"),
        is_cross: bool = True,
        select: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Prompt-to-prompt's aggregate; see ``shapetrace.maps.aggregation.aggregate``."""
        from shapetrace.maps.aggregation import aggregate

        return aggregate(self, res, from_where, is_cross, select, **kwargs)


def _as_res(res: int | Sequence[int]) -> Resolution:
    """An int side or an (h, w) pair as (h, w)."""
    if isinstance(res, int):
        return (res, res)
    h, w = res
    return (int(h), int(w))
