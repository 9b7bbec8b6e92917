"""Benchmark 7: a ``torch.compile``'d model traced against the same compiled model untraced.

Compile time: the first call of a fresh compile (dynamo reset before each), untraced and
inside ``trace()`` (which records the journey from one eager forward of the original module
beside the compiled one). Then, with both warm, a forward in a ``with trace(...)`` block against
one without: tracing a compiled model must leave it compiled. The full run compiles with
inductor; ``--quick`` uses dynamo's ``eager`` backend, which exercises the same path fast.
"""

from __future__ import annotations

from typing import Any

from benchmarks._interleave import interleave
from benchmarks._probes import timed
from benchmarks._settings import Settings
from benchmarks._stats import Series, Target, compare

__all__ = ["rows", "specs", "time_task"]

GROUP = "7. torch.compile, traced vs untraced"
WARM = Target(1.10, "a traced compiled forward costs at most 10% more")
COMPILE = Target(2.0, "compiling under trace() takes at most twice as long")


def time_task(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch._dynamo

    from shapetrace import trace
    from shapetrace.models import build_model

    def fresh() -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        torch._dynamo.reset()
        built = build_model(args["model"], device="cpu", seed=0)
        inputs, kwargs = built.inputs(args["height"], args["width"], args["batch"], seed=0)
        return torch.compile(built.module, backend=args["backend"]), inputs, kwargs

    compiled, inputs, kwargs = fresh()

    def untraced() -> None:
        with torch.no_grad():
            compiled(*inputs, **kwargs)

    first_untraced, _ = timed(untraced)
    compiled, inputs, kwargs = fresh()

    def traced() -> None:
        with torch.no_grad(), trace(compiled):
            compiled(*inputs, **kwargs)

    first_traced, _ = timed(traced)
    plain, hooked = interleave(untraced, traced, pairs=args["pairs"], warmup=args["warmup"])
    return {
        "compile": {"untraced": [first_untraced.wall], "traced": [first_traced.wall]},
        "untraced": plain,
        "traced": hooked,
    }


def specs(s: Settings) -> list[dict[str, Any]]:
    h, w, b = s.compile_size
    return [{"task": "compile_time", "args": {
        "model": s.compile_model, "height": h, "width": w, "batch": b,
        "backend": s.compile_backend, "pairs": s.compile_pairs, "warmup": 2,
    }}]


def rows(s: Settings, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for result in results:
        a, error = result.get("args", {}), result.get("error")
        where = f"{a.get('model')} on cpu, {a.get('height')}x{a.get('width')}, " \
                f"batch {a.get('batch')}, backend {a.get('backend')}"
        times = result.get("compile", {})
        out.append(compare(
            "compile_first_call", f"first call of a fresh compile, traced vs untraced ({where})",
            Series("in trace()", list(times.get("traced", [])), error),
            Series("untraced", list(times.get("untraced", [])), error),
            unit="s", group=GROUP, target=COMPILE,
            note="one sample each (a compile is minutes with inductor on 2 cores); the traced "
                 "one adds an eager forward of the original module to record the journey",
        ))
        for clock in ("wall", "cpu"):
            out.append(compare(
                f"compile_warm_{clock}", f"{clock} time of a warm compiled forward ({where})",
                Series("traced", list(result.get("traced", {}).get(clock, [])), error),
                Series("untraced", list(result.get("untraced", {}).get(clock, [])), error),
                unit="s", group=GROUP, paired=True, target=WARM if clock == "wall" else None,
                note=f"{a.get('pairs')} ABBA pairs after 2 warm-ups: the wrapper's one hook "
                     "checks the signature; the compiled graph runs as compiled",
            ))
    return out
