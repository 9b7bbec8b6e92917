"""How a call handed to a store becomes part of its sums: checks, holding, summing.

A call is checked in full when it comes (its layer is selected, its grid matches its query,
its batch matches the row labels, its maps match the window's shapes) and held (see
``_deferred``) until the store sums a few at a time. A call like one checked before (same
layer, grid, q and k shapes, device and grad mode) under the same settings is counted (in a
"forward" window, refused if its layer ran already) and held at once; the window's shape
check runs when it is summed. Python run between the model's ops costs several times what it
costs run alone (the model's kernels and ours share one core's caches), so a repeated call
does as little as it can at hand-over. The sums are the same, and so are the errors (a
window's shape mismatch is raised when such a call is summed rather than when it comes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from shapetrace.errors import InputShapeError, ShapeTraceError
from shapetrace.maps import rows as _rows
from shapetrace.maps._deferred import Pending, held_bytes
from shapetrace.maps._store_settings import Detail, Resolution, Window
from shapetrace.maps._sums import CallLike, Known, MapKey, MapSum
from shapetrace.maps.rows import RowLabel, batch_rows

__all__ = ["Intake"]


class Intake:
    """The store's side that takes calls in (``AttentionStore`` holds the state it uses)."""

    kinds: tuple[str, ...]
    places: tuple[str, ...]
    resolutions: frozenset[Resolution] | None
    keep: str
    window: Window
    detail: Detail
    grad: bool
    defer: bool
    rows: tuple[RowLabel, ...] | None
    errors: list[Exception]
    _auto_rows: bool
    _entries: dict[MapKey, MapSum]
    _pending: Pending
    _shapes: dict[MapKey, tuple[int, ...]]
    _stale: bool
    _open: int
    _seen: set[tuple[str, int]]
    _selection: tuple[Any, tuple[RowLabel, ...], torch.Tensor | slice] | None
    _known: dict[tuple[Any, ...], Known]
    _now: tuple[Any, ...]
    _largest: Resolution | None

    if TYPE_CHECKING:

        def selects(self, layer: Any) -> bool: ...

    def _note_grid(self, res: Any) -> None:
        if res is not None and (self._largest is None or res[0] * res[1] > _area(self._largest)):
            self._largest = (int(res[0]), int(res[1]))

    def _open_window(self) -> None:
        self._entries.clear()
        self._shapes.clear()
        self._seen.clear()
        self._stale = False
        if self._auto_rows:
            self.rows = None

    def _add(self, call: CallLike) -> None:
        """Check a call and hold it (or sum it now with ``defer=False``). A call like one
        checked before, in a window already open, is held at once and its checks' outcome
        reused when it is summed: Python run between the model's ops costs several times
        what it costs alone, so a repeated call does as little as it can here."""
        enabled = torch.is_grad_enabled()
        grad = self.grad and enabled  # a running sum that keeps no graph builds none
        if not self.defer:
            args = self._accept(call, grad)
            if args is not None:
                with torch.set_grad_enabled(grad):
                    self._sum(call, *args)
            return
        q, k = call.query_heads, call.key_heads
        like = (call.layer.name, call.layer.resolution, q.shape, k.shape, q.device, enabled)
        known = None if self._stale else self._known.get(like)
        if known is not None:
            self._mark_call(call.layer, call)  # counted; in a "forward" window, refused now
            if self._pending.add(call, known, enabled, known.nbytes):
                self._flush()
            return
        args = self._accept(call, grad)
        if args is None:
            return
        nbytes = held_bytes(call)
        self._current_settings()
        self._known[like] = Known(args, self._shapes[args[1]], nbytes, self._now)
        if self._pending.add(call, args, enabled, nbytes):
            self._flush()

    def _current_settings(self) -> None:
        """Note the settings now; calls known under others are forgotten (and held ones
        checked in full when summed)."""
        now = self._settings()
        if now != self._now:
            self._known.clear()
            self._now = now

    def _settings(self) -> tuple[Any, ...]:
        """What a call's checks read besides the call and the window."""
        return (self.rows, self.keep, self.kinds, self.places, self.resolutions, self.detail,
                self.grad, self.window)

    def _take(self, call: CallLike, job: Any, enabled: bool) -> None:
        """Sum a held call under the grad mode it was handed over in (``enabled``). A call
        held as like one checked before gets the window's shape check now, or every check if
        the settings changed since (it was counted, and marked, when it came)."""
        if isinstance(job, Known):
            if job.settings is not self._now:
                job = self._accept(call, self.grad and enabled, marked=True)
                if job is None:
                    return
            else:
                key = job.args[1]
                stored = self._shapes.setdefault(key, job.maps)
                if stored != job.maps:
                    raise _mismatch(call.layer.name, job.maps, stored, key)
                job = job.args
        grad = self.grad and enabled
        if grad == torch.is_grad_enabled():
            self._sum(call, *job)
        else:
            with torch.set_grad_enabled(grad):
                self._sum(call, *job)

    def _accept(
        self, call: CallLike, grad: bool, *, marked: bool = False
    ) -> tuple[Any, ...] | None:
        """Check a call in full (``marked``: counted when it came): the arguments of its
        sum, or None when not selected."""
        layer = call.layer
        self._note_grid(layer.resolution)
        if not self.selects(layer):
            return None
        b, heads = call.query_heads.shape[:2]
        # a joint layer's cross block: its image queries and text keys (None: every token)
        n = _span(getattr(call, "query_tokens", None), call.query_heads.shape[2])
        m = _span(getattr(call, "key_tokens", None), call.key_heads.shape[2])
        if layer.resolution is None:
            raise ShapeTraceError(
                f"layer {layer.name!r} has no resolution (query {tuple(call.query_heads.shape)}); "
                "the store needs the layer's (h, w) from its feature map; leave its place "
                f"{layer.place!r} out of places= or keep only some resolutions="
            )
        h, w = (int(x) for x in layer.resolution)
        if h * w != n:
            raise ShapeTraceError(
                f"layer {layer.name!r}: resolution {h}x{w} has {h * w} pixels but the query "
                f"has N={n} tokens (query_heads {tuple(call.query_heads.shape)})"
            )
        if self.grad and not grad:
            raise ShapeTraceError(
                f"layer {layer.name!r}: the store keeps gradients (grad=True) but the forward "
                "runs under torch.no_grad(); run it under torch.enable_grad() with "
                "latents.requires_grad_(True), or build the store with grad=False"
            )
        if self._stale:
            self._open_window()
        if not marked:
            self._mark_call(layer, call)
        kept, rows = self._row_selection(b, layer.name, call.query_heads.device)
        name = "" if self.detail == "resolution" else str(layer.name)
        key = MapKey(layer.place, layer.kind, (h, w), name)
        shape = (len(kept), heads, n, m) if self.detail == "head" else (len(kept), n, m)
        known = self._shapes.setdefault(key, shape)
        if known != shape:
            raise _mismatch(layer.name, shape, known, key)
        return (str(layer.name), key, rows, (len(kept), heads, n, m))

    def _flush(self, *, raising: bool = True) -> None:
        """Sum the calls accepted so far (see ``_deferred``); an error is kept like any
        call's, and raised unless ``raising`` is False (an exception is already on its way)."""
        if not self._pending:
            return
        self._current_settings()
        try:
            self._pending.drain(self._take)
        except Exception as err:
            self.errors.append(err)
            if raising:
                raise

    def _sum(
        self,
        call: CallLike,
        layer: str,
        key: MapKey,
        rows: torch.Tensor | slice,
        expected: tuple[int, int, int, int],
    ) -> None:
        """Add one accepted call's probabilities (R, H, N, M) to the sum under ``key``."""
        probs = call.compute_probs(torch.float32, rows=rows, grad=self.grad)
        if probs.shape != expected:
            raise ShapeTraceError(
                f"layer {layer!r}: probabilities {tuple(probs.shape)} for the kept rows, "
                f"expected (R, H, N, M) = {expected}"
            )
        part = probs if self.detail == "head" else probs.sum(dim=1)  # (R, [H,] N, M)
        entry = self._entries.get(key)
        if entry is None:
            # the sum over heads is a new tensor; kept heads may be a view of the layer's own
            total = part if self.grad or self.detail != "head" else part.detach().clone()
            entry = self._entries[key] = MapSum(total=total, heads=expected[1])
        elif self.grad:
            entry.total = entry.total + part
        else:
            entry.total.add_(part)
        entry.count += expected[1]
        entry.calls += 1
        entry.layers.add(layer)

    def _mark_call(self, layer: Any, call: Any) -> None:
        """Count the call; in a "forward" window refuse a layer call seen twice."""
        self._open += 1
        if self.window != "forward":
            return
        mark = (str(layer.name), int(getattr(layer, "call", 0) or 0))
        index = getattr(call, "call_index", None)  # the tracer's own count of this call
        if index is not None:
            mark = (str(layer.name), int(index))
        if mark in self._seen:
            raise InputShapeError(
                f"layer {layer.name!r} ran twice in one forward window (window='forward'): "
                "end each forward with store.end_forward(), or run it as "
                "`with store.capture(unet): unet(...)`"
            )
        self._seen.add(mark)

    def _row_selection(
        self, batch: int, layer_name: str, device: torch.device
    ) -> tuple[tuple[RowLabel, ...], torch.Tensor | slice]:
        """The kept rows and how to take them from the batch: a slice when they are
        consecutive (a view, no copy), else an index on ``device``; cached per labels. With
        ``grad`` always an index: autograd then saves a copy of the kept rows of q and k, not
        the whole projection output a view would keep alive."""
        cache_key = (self.rows, batch, self.keep, device)
        cached = self._selection
        if cached is not None and cached[0] == cache_key:
            return cached[1], cached[2]
        kept = self._kept_rows(batch, layer_name)
        rows = _rows.taker(kept, device, view=not self.grad)
        self._selection = ((self.rows, batch, self.keep, device), kept, rows)
        return kept, rows

    def _kept_rows(self, batch: int, layer_name: str) -> tuple[RowLabel, ...]:
        if self.rows is None:  # unlabelled: every row is its own prompt, no guidance
            self.rows = batch_rows(batch, guidance=False)
        if len(self.rows) != batch:
            branches = sorted({r.branch for r in self.rows})
            raise InputShapeError(
                f"layer {layer_name!r} got batch {batch} but the store was told "
                f"{len(self.rows)} rows ({', '.join(branches)}); build it with "
                "AttentionStore.for_batch(prompts, guidance=...) matching the model's batch"
            )
        return _rows.kept(self.rows, self.keep)


def _mismatch(
    layer: str, shape: tuple[int, ...], known: tuple[int, ...], key: MapKey
) -> ShapeTraceError:
    return ShapeTraceError(
        f"layer {layer!r}: maps {shape} do not match the {known} already stored for "
        f"{tuple(key)}; the context length or batch changed within one window: call "
        "store.reset() between runs"
    )


def _span(tokens: slice | None, total: int) -> int:
    """How many of ``total`` tokens a slice selects (all of them for None)."""
    return total if tokens is None else len(range(*tokens.indices(total)))


def _area(res: Resolution) -> int:
    return res[0] * res[1]
