"""Benchmark 2: a real CPU forward under ``shapetrace.trace`` (defaults: monitors on, no
probes) against the same forward untraced, in interleaved pairs after a warm-up."""

from __future__ import annotations

from typing import Any

from benchmarks._interleave import interleave
from benchmarks._probes import timed
from benchmarks._settings import Settings
from benchmarks._stats import Series, Target, compare, median

__all__ = ["rows", "specs", "time_task"]

GROUP = "2. CPU forward, traced vs untraced"
OVERHEAD = Target(1.05, "tracing adds at most 5%")


def time_task(args: dict[str, Any]) -> dict[str, Any]:
    """Build ``args["model"]`` on CPU (random weights), then time untraced/traced pairs."""
    import torch

    from shapetrace import trace
    from shapetrace.models import build_model

    t, built = timed(lambda: build_model(args["model"], device="cpu", seed=0))
    module = built.module
    inputs, kwargs = built.inputs(args["height"], args["width"], args["batch"], seed=0)
    layers: list[int] = []

    def untraced() -> None:
        with torch.no_grad():
            module(*inputs, **kwargs)

    def traced() -> None:
        with torch.no_grad(), trace(module) as journey:
            module(*inputs, **kwargs)
        layers.append(len(journey.layers))

    def enter_exit() -> None:
        with trace(module, strict=False):
            pass

    plain, hooked = interleave(untraced, traced, pairs=args["pairs"], warmup=args["warmup"])
    setup = [timed(enter_exit)[0].cpu for _ in range(5)]
    return {
        "untraced": plain,
        "traced": hooked,
        "facts": {
            "build_s": t.wall,
            "layers": layers[-1] if layers else None,
            "enter_exit_cpu_s": median(setup),
        },
    }


def specs(s: Settings) -> list[dict[str, Any]]:
    """One timing task per CPU case."""
    return [
        {
            "task": "cpu_time",
            "args": {"model": m, "height": h, "width": w, "batch": b, "pairs": p, "warmup": wu},
        }
        for m, h, w, b, p, wu in s.cpu_cases
    ]


def rows(s: Settings, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 2's rows: wall (with the 5% target) and CPU time per case."""
    out: list[dict[str, Any]] = []
    for result in results:
        a = result.get("args", {})
        size = f"{a.get('height')}x{a.get('width')}"
        where = f"{a.get('model')} on cpu, {size}, batch {a.get('batch')}"
        error = result.get("error")
        facts = result.get("facts", {})
        for clock in ("wall", "cpu"):
            traced = Series("traced", list(result.get("traced", {}).get(clock, [])), error)
            plain = Series("untraced", list(result.get("untraced", {}).get(clock, [])), error)
            added = (
                None if traced.median is None or plain.median is None
                else traced.median - plain.median
            )
            setup = facts.get("enter_exit_cpu_s")
            cost = (
                "" if added is None or setup is None
                else f"; tracing adds {added * 1000:.1f} ms per forward, of which entering and "
                f"leaving trace() (layer discovery, hooks; no forward) takes {setup * 1000:.1f} ms"
            )
            out.append(
                compare(
                    f"cpu_{a.get('model')}_{clock}",
                    f"{clock} time of one forward ({where})",
                    traced,
                    plain,
                    unit="s",
                    group=GROUP,
                    target=OVERHEAD if clock == "wall" else None,
                    paired=True,
                    note=f"{a.get('pairs')} ABBA pairs after {a.get('warmup')} warm-up each, "
                    f"{facts.get('layers', '?')} attention calls traced{cost}",
                    extra={"added_s": added, "enter_exit_cpu_s": setup,
                           "build_s": facts.get("build_s")},
                )
            )
    return out
