"""The attention store: a tracer probe that keeps running sums of attention probabilities.

Prompt-to-prompt keeps a list of maps per step and per layer; this store keeps one running sum
per key and a count of the head maps added, so memory is flat in the number of steps. What a
key is depends on ``detail``: one per (place, kind, grid) ("resolution", the default), one per
layer ("layer"), or one per layer with every head kept apart ("head").

Which calls the sums hold is the ``window``, and its boundaries are explicit:

- ``"run"``: everything since ``reset()`` (prompt-to-prompt's average over steps);
- ``"step"``: the current denoising step, the calls since the last ``end_step()`` (LEDITS++);
- ``"forward"``: the last forward, the calls since the last ``end_forward()`` (Attend-and-Excite,
  Break-a-Scene). ``capture(model)`` traces one forward and ends it.

A closed window stays readable until the next call opens a new one. With ``grad=True`` the
sums keep their autograd graph, so a loss on the maps reaches the latents and the weights.

>>> store = AttentionStore.for_batch(prompts=1, guidance=True)     # rows: uncond, cond
>>> with store.capture(unet):                                      # doctest: +SKIP
...     unet(latents2, t, encoder_hidden_states=text2)               # batch 2
>>> store.entries[("up", "cross", (16, 16), "")].total.shape       # doctest: +SKIP
torch.Size([1, 256, 77])

The store knows nothing of aggregation: ``shapetrace.maps.aggregation`` and the recipes read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps import rows as _rows
from shapetrace.maps._deferred import Pending
from shapetrace.maps._intake import Intake
from shapetrace.maps._store_settings import (
    ALL_PLACES,
    DEFAULT_KINDS,
    DEFAULT_PLACES,
    DETAILS,
    KINDS,
    WINDOWS,
    Detail,
    Resolution,
    Window,
    check_choice,
    check_flag,
    check_names,
    check_resolutions,
)
from shapetrace.maps._sums import CallLike, Key, Known, MapKey, MapSum
from shapetrace.maps.rows import RowLabel, batch_rows

__all__ = ["PLACES", "AttentionStore", "Key", "MapKey", "MapSum", "RowLabel", "batch_rows"]

PLACES = ("down", "mid", "up")  # a UNet's places


class AttentionStore(Intake):
    """A probe for ``shapetrace.trace`` that accumulates attention maps.

    Args:
        rows: labels of the batch rows (``batch_rows``); None labels each row "single" with
            prompt = row (no guidance), afresh at each window.
        kinds: attention kinds kept, from "cross", "self", "joint" (default cross and joint:
            a joint layer's image-query x text-key block is cross-attention).
        places: from "down", "mid", "up", "transformer", "single", "text", "model"; the default
            is every place with an image grid (all but "text").
        resolutions: keep only these grids (a side or (h, w)); None keeps all.
        keep: "cond" keeps conditional (and "single") rows, as prompt-to-prompt; "all" all.
        window: "run", "step" or "forward" (see the module's doc).
        detail: "resolution", "layer" or "head": what one running sum holds.
        grad: keep the autograd graph (the forward must run with gradients enabled).
        defer: sum the calls' probabilities a few at a time (8 calls, or 64 MiB of q and k
            held, or the model's call ends) rather than each as it comes (cheaper); False
            sums each call as it comes.

    Every setting is checked here; a bad one raises ``InputShapeError`` naming it.
    """

    def __init__(
        self,
        *,
        rows: Sequence[RowLabel] | None = None,
        kinds: Iterable[str] = DEFAULT_KINDS,
        places: Iterable[str] = DEFAULT_PLACES,
        resolutions: Iterable[int | Resolution] | None = None,
        keep: str = "cond",
        window: Window = "run",
        detail: Detail = "resolution",
        grad: bool = False,
        defer: bool = True,
    ) -> None:
        self.kinds = check_names("kinds", kinds, KINDS)
        self.places = check_names("places", places, ALL_PLACES)
        self.resolutions = check_resolutions(resolutions)
        self.keep = check_choice("keep", keep, ("cond", "all"))
        self.window: Window = check_choice("window", window, WINDOWS)  # type: ignore[assignment]
        self.detail: Detail = check_choice("detail", detail, DETAILS)  # type: ignore[assignment]
        self.grad = check_flag("grad", grad)
        self.defer = check_flag("defer", defer)
        self._auto_rows = rows is None
        self.rows: tuple[RowLabel, ...] | None = None if rows is None else _rows.check_rows(rows)
        self._entries: dict[MapKey, MapSum] = {}
        self._pending = Pending()
        self._shapes: dict[MapKey, tuple[int, ...]] = {}  # of each key's sum in this window
        self.errors: list[Exception] = []
        self.steps = 0
        self.forwards = 0
        self.latent: tuple[int, int, int] | None = None  # (C, H, W) of the last captured input
        self._largest: Resolution | None = None
        self._stale = False
        self._open = 0  # calls since the last forward boundary
        self._seen: set[tuple[str, int]] = set()
        self._selection: tuple[Any, tuple[RowLabel, ...], torch.Tensor | slice] | None = None
        self._known: dict[tuple[Any, ...], Known] = {}  # calls checked before, see _add
        self._now: tuple[Any, ...] = ()  # the settings while the held calls are summed

    @classmethod
    def for_batch(
        cls,
        prompts: int = 1,
        *,
        images_per_prompt: int = 1,
        guidance: bool = True,
        shared_uncond: bool = False,
        **kwargs: Any,
    ) -> AttentionStore:
        """A store whose rows are labelled for ``prompts`` prompts, with or without CFG."""
        rows = batch_rows(
            prompts, images_per_prompt=images_per_prompt, guidance=guidance,
            shared_uncond=shared_uncond,
        )
        return cls(rows=rows, **kwargs)

    def __repr__(self) -> str:
        res = "all" if self.resolutions is None else sorted(self.resolutions)
        return (
            f"AttentionStore(kinds={self.kinds}, places={self.places}, resolutions={res}, "
            f"keep={self.keep!r}, window={self.window!r}, detail={self.detail!r}, "
            f"grad={self.grad}, maps={len(self._entries)})"
        )

    # -- the probe protocol ---------------------------------------------------------------
    def selects(self, layer: Any) -> bool:
        """Whether ``layer`` passes the kind, place and resolution filters (no side effect)."""
        if layer.kind not in self.kinds or layer.place not in self.places:
            return False
        if self.resolutions is None:
            return True
        return layer.resolution is not None and tuple(layer.resolution) in self.resolutions

    def wants(self, layer: Any) -> bool:
        """The tracer asks this before each call; it also notes the largest grid seen."""
        self._note_grid(getattr(layer, "resolution", None))
        return self.selects(layer)

    def on_missed(self, layer: Any, why: str) -> None:
        """The tracer could not give this store a call it wanted: kept as an error, raised by
        ``check()`` and every reader, so no map is silently short of a layer."""
        name = getattr(layer, "name", layer)
        self.errors.append(
            ShapeTraceError(f"layer {name!r} ran but its attention could not be captured: {why}")
        )

    def on_attention(self, call: CallLike) -> None:
        """Add one call's probabilities (B, H, N, M) to its running sum.

        An error is raised and also kept: ``check()`` (called by ``end_step``, ``end_forward``
        and every reader) raises it again, so a tracer that shields the forward from probe
        errors cannot turn it into a silently empty store.
        """
        try:
            self._add(call)
        except Exception as err:
            self.errors.append(err)
            raise

    def check(self) -> None:
        """Raise the first error a call raised in this store, if any."""
        self._flush(raising=False)
        if self.errors:
            raise self.errors[0]

    def on_forward_end(self) -> None:
        """The traced model's call ended: sum the calls it handed over."""
        self._flush()

    @property
    def budget_bytes(self) -> int:
        """Bytes of q and k a deferring store holds before it sums at once."""
        return self._pending.budget

    @property
    def entries(self) -> dict[MapKey, MapSum]:
        """The running sums by key, with every call handed over so far summed in."""
        self._flush()
        return self._entries

    @property
    def kept_rows(self) -> tuple[RowLabel, ...]:
        """Labels of the rows the running sums hold, in their order (needs known rows)."""
        if self.rows is None:
            raise ShapeTraceError("the store's rows are not labelled yet; no call has been seen")
        return _rows.kept(self.rows, self.keep)

    def row_position(self, select: int, *, image: int = 0, branch: str | None = None) -> int:
        """Position, among the kept rows, of prompt ``select``'s conditional row
        (``branch="uncond"`` its unconditional row, which needs keep="all")."""
        return _rows.position(self.kept_rows, select, image=image, branch=branch)

    @property
    def latent_size(self) -> Resolution:
        """(H, W) of the latent: what ``capture`` saw enter the model, else the largest
        attention grid seen (the latent for SD 1.x/2.x UNets)."""
        if self.latent is not None:
            return (self.latent[1], self.latent[2])
        if self._largest is not None:
            return self._largest
        raise ShapeTraceError(
            "the store has seen no forward yet, so it knows no latent size; run a forward "
            "inside `with store.capture(model):` first, or pass latent_size= explicitly"
        )

    # -- boundaries ----------------------------------------------------------------------
    def end_forward(self) -> None:
        """Mark the end of one forward: a "forward" window closes (its maps stay readable
        until the next call). Raises the error of a failed call, if one failed."""
        self._boundary()
        self.check()

    def _boundary(self, *, raising: bool = True) -> None:
        self._flush(raising=raising)
        if self._open:
            self.forwards += 1
            self._open = 0
            if self.window == "forward":
                self._stale = True

    def end_step(self) -> None:
        """Mark the end of one denoising step (also the end of a forward): a "step" window
        closes. Raises the error of a failed call, if one failed during the step."""
        self.end_forward()
        self.steps += 1
        if self.window == "step":
            self._stale = True

    def reset(self) -> None:
        """Forget every stored map, error and count (the settings and row labels stay)."""
        self._pending.clear()
        self._known.clear()
        self._open_window()
        self.errors.clear()
        self.steps = self.forwards = self._open = 0
        self.latent = self._largest = None

    def capture(
        self, model: nn.Module, *, monitors: bool = False, probes: Iterable[Any] = ()
    ) -> AbstractContextManager[Any]:
        """Trace ``model`` with this store as probe for the block; yields the journey.

        Each forward of ``model`` in the block is a forward boundary, and so is the end of
        the block; the input's (C, H, W) is noted as the latent. Other stores among ``probes``
        get the same boundaries and latent. Hooks go when the block ends.

        >>> with store.capture(unet):                                  # doctest: +SKIP
        ...     unet(latents, t, encoder_hidden_states=context)
        """
        from shapetrace.maps._capture import capturing

        if not isinstance(model, nn.Module):
            raise InputShapeError(
                f"capture() takes the model (an nn.Module, e.g. pipe.unet), got "
                f"{type(model).__name__}"
            )
        probes = (self, *probes)
        stores = [p for p in probes if isinstance(p, AttentionStore)]
        return capturing(model, stores, probes, monitors=monitors)

    # -- what it holds -------------------------------------------------------------------
    def available(self) -> dict[tuple[str, str], list[Resolution]]:
        """Grids stored per (place, kind), e.g. {("up", "cross"): [(16, 16), (32, 32)]}."""
        out: dict[tuple[str, str], set[Resolution]] = {}
        for key in self.entries:
            out.setdefault((key.place, key.kind), set()).add(key.resolution)
        return {k: sorted(v) for k, v in out.items()}

    def nbytes(self) -> int:
        """Bytes the running sums hold now (not counting an autograd graph behind them)."""
        return sum(e.total.numel() * e.total.element_size() for e in self.entries.values())
