"""Benchmark 2: a real forward under ``shapetrace.trace`` (defaults: monitors on, no probes)
against the same forward untraced, and with an ``AttentionStore`` capturing maps under
classifier-free guidance against no capture; in interleaved pairs after a warm-up, a ``with``
block around every forward (what a loop over denoising steps does). On CPU by default; with
``--device cuda`` the same cases run on the GPU too, synchronized after each forward.

Also: entering and leaving ``trace()`` on SD 1.5 (discovery is cached per model, so this is
the hooks), and the microseconds tracing adds per attention call, with what that would add to
a GPU SD 1.5 forward: a projection from the CPU numbers until measured on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks._interleave import interleave
from benchmarks._probes import timed
from benchmarks._settings import Settings
from benchmarks._stats import Series, Target, compare

__all__ = ["rows", "specs", "time_task"]

GROUP = "2. Forward, traced and capturing vs untraced"
TARGETS = {"tiny": Target(1.10, "tracing adds at most 10%"),
           "sd15": Target(1.02, "tracing adds at most 2%")}
CAPTURE = Target(1.15, "capturing maps adds at most 15%")
ENTER_EXIT = Target(1.0, "entering and leaving trace() within 1 ms")
#: The forward the projection is made for: the tiny UNet on CPU stands in for a GPU SD 1.5
#: forward (same 32 attention calls, a few tens of milliseconds).
STAND_IN = "tiny"


def _synced(fn: Callable[[], None], device: str) -> Callable[[], None]:
    if not device.startswith("cuda"):
        return fn

    def run() -> None:
        import torch

        fn()
        torch.cuda.synchronize()

    return run


def time_task(args: dict[str, Any]) -> dict[str, Any]:
    """Build ``args["model"]`` on ``args["device"]`` (random weights), then time untraced,
    traced and capturing forwards in pairs."""
    import torch

    from shapetrace import trace
    from shapetrace.maps import AttentionStore
    from shapetrace.models import build_model

    device = args.get("device", "cpu")
    t, built = timed(lambda: build_model(args["model"], device=device, seed=0))
    module = built.module
    inputs, kwargs = built.inputs(args["height"], args["width"], args["batch"], seed=0)
    layers: list[int] = []
    store = AttentionStore.for_batch(args["batch"] // 2, guidance=True) if args["batch"] % 2 == 0 \
        else AttentionStore.for_batch(args["batch"], guidance=False)

    def untraced() -> None:
        with torch.no_grad():
            module(*inputs, **kwargs)

    def traced() -> None:
        with torch.no_grad(), trace(module) as journey:
            module(*inputs, **kwargs)
        layers.append(sum(x.calls for x in journey.layers))

    def captured() -> None:
        with torch.no_grad(), store.capture(module):
            module(*inputs, **kwargs)

    def bare() -> None:  # the light path alone: no monitors, no probes
        with torch.no_grad(), trace(module, monitors=False):
            module(*inputs, **kwargs)

    idle = _IdleProbe(store)

    def handed() -> None:  # q and k handed over to a probe that wants the store's layers
        with torch.no_grad(), trace(module, monitors=False, probes=[idle]):
            module(*inputs, **kwargs)

    def enter_exit() -> None:
        with trace(module, strict=False):
            pass

    plain, hooked = interleave(_synced(untraced, device), _synced(traced, device),
                               pairs=args["pairs"], warmup=args["warmup"])
    out: dict[str, Any] = {"untraced": plain, "traced": hooked}
    if args.get("capture"):
        out["uncaptured"], out["captured"] = interleave(
            _synced(untraced, device), _synced(captured, device),
            pairs=args["pairs"], warmup=args["warmup"],
        )
        for name, fn in (("bare", bare), ("handed", handed)):
            out[f"{name}_base"], out[name] = interleave(
                _synced(untraced, device), _synced(fn, device),
                pairs=args["pairs"], warmup=args["warmup"],
            )
        out["idle_calls"] = idle.calls
    setup = [timed(enter_exit)[0].wall for _ in range(21)]
    out["facts"] = {
        "build_s": t.wall,
        "layers": layers[-1] if layers else None,
        "enter_exit_s": setup,
        "device": device,
    }
    return out


_PARTS = (
    ("bare", "tracing without monitors or probes vs untraced",
     "trace(unet, monitors=False): the light replay's hooks alone; the traced row above adds "
     "the finiteness check of each layer's first call"),
    ("handed", "q and k handed to a probe that does nothing vs untraced",
     "trace(unet, monitors=False, probes=[p]) where p wants the store's layers and ignores the "
     "calls: the capture row above adds the store's checks and sums to this"),
)


def _breakdown(
    result: dict[str, Any], prefix: str, where: str, error: str | None
) -> list[dict[str, Any]]:
    """Where the capture cost goes (wall time, no targets): the light path, then the
    hand-over of q and k; the store's own share is the capture row minus the second."""
    rows = []
    for name, title, note in _PARTS:
        if name not in result:
            continue
        part = Series(name, list(result[name].get("wall", [])), error)
        base = Series("untraced", list(result[f"{name}_base"].get("wall", [])), error)
        rows.append(compare(
            f"{prefix}_{name}_wall", f"wall time, {title} ({where})", part, base, unit="s",
            group=GROUP, paired=True, note=note,
            extra={"added_s": None if part.median is None or base.median is None
                   else part.median - base.median, "probe_calls": result.get("idle_calls")},
        ))
    return rows


class _IdleProbe:
    """A probe that wants what ``store`` wants and does nothing with the calls: the cost of
    handing q and k over, without the store's checks and sums."""

    def __init__(self, store: Any) -> None:
        self.store, self.calls = store, 0

    def wants(self, layer: Any) -> bool:
        return bool(self.store.selects(layer))

    def on_attention(self, call: Any) -> None:
        self.calls += 1


def specs(s: Settings) -> list[dict[str, Any]]:
    """One timing task per case and device."""
    return [
        {
            "task": "cpu_time",
            "args": {"model": m, "height": h, "width": w, "batch": b, "pairs": p, "warmup": wu,
                     "device": device, "capture": m == STAND_IN},
        }
        for device in s.devices
        for m, h, w, b, p, wu in s.cpu_cases
    ]


def _prefix(device: str) -> str:
    return "cpu" if device == "cpu" else device.replace(":", "")


def rows(s: Settings, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wall (with targets) and CPU time per case, capture, enter/exit and the per-call cost."""
    out: list[dict[str, Any]] = []
    stand_in = None
    for result in results:
        a = result.get("args", {})
        device, model = a.get("device", "cpu"), a.get("model")
        where = f"{model} on {device}, {a.get('height')}x{a.get('width')}, batch {a.get('batch')}"
        error, facts = result.get("error"), result.get("facts", {})
        calls = facts.get("layers")
        prefix = f"{_prefix(device)}_{model}"
        for clock in ("wall", "cpu"):
            traced = Series("traced", list(result.get("traced", {}).get(clock, [])), error)
            plain = Series("untraced", list(result.get("untraced", {}).get(clock, [])), error)
            added = None if traced.median is None or plain.median is None \
                else traced.median - plain.median
            per_call = None if added is None or not calls else added / calls
            if clock == "wall" and device == "cpu" and model == STAND_IN:
                stand_in = (per_call, plain.median, calls)
            note = f"{a.get('pairs')} ABBA pairs after {a.get('warmup')} warm-up each, a `with` " \
                   f"per forward, {calls or '?'} attention calls"
            if per_call is not None:
                note += f"; tracing adds {per_call * 1e6:.0f} µs per attention call"
            out.append(compare(
                f"{prefix}_{clock}", f"{clock} time of one forward ({where})", traced, plain,
                unit="s", group=GROUP, paired=True, note=note,
                target=TARGETS.get(model) if clock == "wall" else None,
                extra={"added_s": added, "added_per_call_s": per_call, "calls": calls,
                       "build_s": facts.get("build_s")},
            ))
            if "captured" in result:
                cap = Series("captured", list(result["captured"].get(clock, [])), error)
                base = Series("no capture", list(result["uncaptured"].get(clock, [])), error)
                out.append(compare(
                    f"{prefix}_capture_{clock}",
                    f"{clock} time, AttentionStore under guidance vs no capture ({where})",
                    cap, base, unit="s", group=GROUP, paired=True,
                    target=CAPTURE if clock == "wall" else None,
                    note="store.capture(unet) around each forward: each cross call's q and k "
                         "handed over through the learned plan, probabilities of the kept "
                         "(conditional) rows summed every 8 calls and when the forward ends",
                ))
        out.extend(_breakdown(result, prefix, where, error))
        if model == "sd15" and facts.get("enter_exit_s"):
            budget = Series("budget", [0.001])
            out.append(compare(
                f"{prefix}_enter_exit", f"entering and leaving trace() ({where})",
                Series("enter + exit", list(facts["enter_exit_s"]), error), budget,
                unit="s", group=GROUP, target=ENTER_EXIT,
                note="21 samples after the first trace (discovery cached per model): the hooks",
            ))
    if stand_in is not None and stand_in[0] is not None and stand_in[1]:
        per_call, forward, _calls = stand_in
        out.append(compare(
            "projected_gpu_sd15", "projected, not measured: a GPU SD 1.5 forward traced",
            Series("forward + 32 x added per call", [forward + per_call * 32]),
            Series("a forward as long as the tiny CPU stand-in", [forward]),
            unit="s", group=GROUP,
            note=f"{per_call * 1e6:.0f} µs added per attention call (measured on CPU) x SD 1.5's "
                 f"32 calls, on a {forward * 1e3:.1f} ms forward; `python -m benchmarks --device "
                 "cuda` measures a real GPU forward instead",
        ))
    return out

