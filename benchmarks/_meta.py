"""Benchmark 1: the full SD 1.5 journey on ``meta``, ``shapetrace.trace`` against
``torchinfo.summary`` of the same model and inputs (which sees only module boundaries).

Timed: one traced forward (and, as "render", that plus the text report of every layer) against
one ``torchinfo.summary(..., verbose=0)`` (and its ``str()``). Building the model is timed
apart. A torchinfo failure is kept as the baseline's error text.
"""

from __future__ import annotations

from typing import Any

from benchmarks._interleave import interleave
from benchmarks._probes import python_heap_peak, rss_peak, timed
from benchmarks._settings import Settings
from benchmarks._stats import Series, Target, compare

__all__ = ["memory_task", "rows", "specs", "time_task"]

GROUP = "1. SD 1.5 journey on meta"
TOOLS = ("shapetrace", "torchinfo")
NO_SLOWER = Target(1.0, "shapetrace no slower than torchinfo")


def _setup(args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Build the model on meta; the workloads by name and the build facts."""
    import torch

    from shapetrace.models import build_model

    t, built = timed(lambda: build_model(args["model"], device="meta"))
    module = built.module
    inputs, kwargs = built.inputs(args["height"], args["width"], args["batch"])

    def shapetrace_run() -> Any:
        from shapetrace import trace

        with torch.no_grad(), trace(module) as journey:
            module(*inputs, **kwargs)
        return journey

    def torchinfo_run() -> Any:
        import torchinfo

        return torchinfo.summary(
            module, input_data=list(inputs), verbose=0, device="meta", **kwargs
        )

    def shapetrace_render() -> str:
        from shapetrace.report import to_markdown

        journey = shapetrace_run()
        return to_markdown(journey, journey.layers)

    def torchinfo_render() -> str:
        return str(torchinfo_run())

    runs = {
        "shapetrace": shapetrace_run,
        "torchinfo": torchinfo_run,
        "shapetrace_render": shapetrace_render,
        "torchinfo_render": torchinfo_render,
    }
    return runs, {"build_s": t.wall, "parameters": built.num_parameters()}


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def time_task(args: dict[str, Any]) -> dict[str, Any]:
    """Interleaved wall/CPU samples of both tools, capture and capture+render."""
    runs, facts = _setup(args)
    journey = runs["shapetrace"]()  # these first runs of each tool are the warm-up
    facts["layers"] = len(journey.layers)
    facts["stages"] = sum(len(layer.stages) for layer in journey.layers)
    out: dict[str, Any] = {"facts": facts}
    try:
        facts["torchinfo_rows"] = len(runs["torchinfo"]().summary_list)
    except Exception as exc:  # recorded as the result, never hidden
        out["torchinfo_error"] = _error(exc)
    for part in ("", "_render"):
        a, b = runs[f"shapetrace{part}"], runs[f"torchinfo{part}"]
        failed = "torchinfo_error" in out
        ta, tb = interleave(a, _noop if failed else b, pairs=args["reps"], warmup=0)
        out[f"shapetrace{part}"] = ta
        out[f"torchinfo{part}"] = {"wall": [], "cpu": []} if failed else tb
    return out


def _noop() -> None:
    """Stands in for a baseline that failed, so the subject keeps its interleaved rhythm."""


def memory_task(args: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the start of the first run of ``args["tool"]`` in this process (cold:
    what one ``shapetrace trace`` costs) and of a second (warm), and the Python heap peak of
    a third."""
    runs, facts = _setup(args)
    run = runs[args["tool"]]
    try:
        cold, _ = rss_peak(run)
    except Exception as exc:
        return {"error": _error(exc), "facts": facts}
    warm, _ = rss_peak(run)
    heap, _ = python_heap_peak(run)
    return {
        "rss_cold": cold.delta,
        "rss_warm": warm.delta,
        "hwm": warm.hwm,
        "heap_peak": heap,
        "facts": facts,
    }


def specs(s: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The worker tasks: one timing task, and memory tasks alternating between the tools."""
    h, w, b = s.meta_size
    base = {"model": s.meta_model, "height": h, "width": w, "batch": b}
    timing = [{"task": "meta_time", "args": {**base, "reps": s.meta_reps}}]
    memory = [
        {"task": "meta_memory", "args": {**base, "tool": tool}, "env": dict(s.memory_env)}
        for _ in range(s.meta_memory_reps)
        for tool in TOOLS
    ]
    return timing, memory


def _series(label: str, samples: list[Any] | None, error: str | None) -> Series:
    """A Series from raw samples (None entries dropped) and an error text."""
    return Series(label, [float(x) for x in samples or [] if x is not None], error)


_PARTS = (
    ("", "trace vs summary"),
    ("_render", "trace + Markdown of every layer vs summary + str()"),
)
_MEMORY = (
    ("rss_cold", "peak RSS above start, first run in the process"),
    ("heap_peak", "Python heap peak (tracemalloc), third run"),
)
_LABELS = {"shapetrace": "shapetrace.trace", "torchinfo": "torchinfo.summary"}


def rows(s: Settings, timing: dict[str, Any], memory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 1's rows from the workers' results (each carries its task's "args")."""
    h, w, b = s.meta_size
    where = f"{s.meta_model} on meta, {h}x{w}, batch {b}"
    facts = timing.get("facts", {})
    note = (
        f"{facts.get('layers', '?')} attention calls, {facts.get('stages', '?')} stages traced; "
        f"torchinfo lists {facts.get('torchinfo_rows', '?')} module rows"
    )
    errors = {"shapetrace": timing.get("error")}
    errors["torchinfo"] = errors["shapetrace"] or timing.get("torchinfo_error")
    out: list[dict[str, Any]] = []
    for part, what in _PARTS:
        for clock in ("wall", "cpu"):
            sides = [
                _series(_LABELS[tool], timing.get(f"{tool}{part}", {}).get(clock), errors[tool])
                for tool in TOOLS
            ]
            target = NO_SLOWER if clock == "wall" and not part else None
            title = f"{clock} time, {what} ({where})"
            out.append(
                compare(f"meta_{clock}{part}", title, *sides, unit="s", group=GROUP,
                        target=target, paired=True, note=note)
            )
    isolation = "a fresh process per sample" if s.isolated else "one shared process"
    env = "".join(f", {k}={v}" for k, v in s.memory_env) if s.isolated else ""
    by_tool = {t: [r for r in memory if r.get("args", {}).get("tool") == t] for t in TOOLS}
    warm = {t: [r.get("rss_warm") for r in rs] for t, rs in by_tool.items()}
    for key, what in _MEMORY:
        sides = []
        for tool, results in by_tool.items():
            error = next((r["error"] for r in results if r.get("error")), None)
            sides.append(_series(_LABELS[tool], [r.get(key) for r in results], error))
        out.append(
            compare(f"meta_{key}", f"{what} ({where})", *sides, unit="bytes", group=GROUP,
                    note=f"model built and modules imported first; {isolation}{env}",
                    extra={"rss_warm_bytes": warm} if key == "rss_cold" else None)
        )
    return out
