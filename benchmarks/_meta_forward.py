"""Benchmark 5: a journey on ``meta`` against a plain ``meta`` forward of the same model, at
its native size: the physical limit of a shape trace (a meta forward computes nothing; what is
left is dispatching every op). SD 1.5, SDXL (140 attention layers) and Flux (57 joint layers).
"""

from __future__ import annotations

from typing import Any

from benchmarks._interleave import interleave
from benchmarks._probes import timed
from benchmarks._settings import Settings
from benchmarks._stats import Series, Target, compare

__all__ = ["rows", "specs", "time_task"]

GROUP = "5. Journeys on meta against a plain meta forward"
LIMIT = Target(1.10, "a journey costs at most 10% over the plain meta forward")


def time_task(args: dict[str, Any]) -> dict[str, Any]:
    """Build ``args["model"]`` on meta, then time plain/traced forwards in ABBA pairs."""
    import torch

    from shapetrace import trace
    from shapetrace.models import build_model

    t, built = timed(lambda: build_model(args["model"], device="meta"))
    module = built.module
    h, w = built.native
    inputs, kwargs = built.inputs(h, w, 1)
    grids = built.grids(h, w)
    layers: list[int] = []

    def plain() -> None:
        with torch.no_grad():
            module(*inputs, **kwargs)

    def journey() -> None:
        with torch.no_grad(), trace(module, grids=grids) as traced:
            module(*inputs, **kwargs)
        layers.append(len(traced.layers))

    forward, traced = interleave(plain, journey, pairs=args["pairs"], warmup=1)
    facts = {"build_s": t.wall, "layers": layers[-1], "height": h, "width": w}
    return {"plain": forward, "traced": traced, "facts": facts}


def specs(s: Settings) -> list[dict[str, Any]]:
    return [
        {"task": "meta_forward", "args": {"model": m, "pairs": s.meta_forward_pairs}}
        for m in s.meta_forward_models
    ]


def rows(s: Settings, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wall (with the 1.10 target) and CPU time per model."""
    out: list[dict[str, Any]] = []
    for result in results:
        model = result.get("args", {}).get("model")
        facts, error = result.get("facts", {}), result.get("error")
        where = f"{model} on meta, {facts.get('height')}x{facts.get('width')}, batch 1"
        for clock in ("wall", "cpu"):
            traced = Series("journey", list(result.get("traced", {}).get(clock, [])), error)
            plain = Series("plain forward", list(result.get("plain", {}).get(clock, [])), error)
            out.append(
                compare(
                    f"meta_forward_{model}_{clock}",
                    f"{clock} time, journey vs plain forward ({where})",
                    traced,
                    plain,
                    unit="s",
                    group=GROUP,
                    target=LIMIT if clock == "wall" else None,
                    paired=True,
                    note=f"{result.get('args', {}).get('pairs')} ABBA pairs after a warm-up; "
                    f"{facts.get('layers', '?')} attention calls",
                    extra={"build_s": facts.get("build_s")},
                )
            )
    return out
