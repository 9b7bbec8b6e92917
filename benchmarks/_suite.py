"""One bench run: every task in order, then the rows, the builds and the machine as one
JSON document (schema ``shapetrace.bench/1``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks import _checker, _compile, _cpu, _machine, _maps, _meta, _meta_forward
from benchmarks._runner import run_specs
from benchmarks._settings import Settings
from benchmarks._stats import median

__all__ = ["SCHEMA", "run_bench"]

SCHEMA = "shapetrace.bench/1"


def _builds(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Build times (not part of any timed sample), grouped by what was built and where."""
    where = {"meta_time": "meta", "meta_memory": "meta", "cpu_time": "cpu", "maps_policy": "cpu"}
    groups: dict[str, list[float]] = {}
    imports = [float(r["import_s"]) for r in results if r.get("import_s") is not None]
    if imports:
        groups["imports in a fresh worker (torch, diffusers, transformers, torchinfo)"] = imports
    for r in results:
        build = r.get("facts", {}).get("build_s")
        if build is None:
            continue
        model = r.get("args", {}).get("model", "?")
        what = (
            f"{model} UNet + CLIP text encoder on cpu (maps chain)"
            if r["task"] in ("maps_memory", "maps_time")
            else f"{model} UNet on {where.get(r['task'], '?')}"
        )
        groups.setdefault(what, []).append(float(build))
    return [
        {"what": what, "unit": "s", "samples": xs, "n": len(xs), "median": median(xs)}
        for what, xs in groups.items()
    ]


def run_bench(
    settings: Settings, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every benchmark of ``settings``; the JSON document of the results."""
    start, load_start = time.perf_counter(), _machine.load_average()
    meta_timing, meta_memory = _meta.specs(settings)
    cpu = _cpu.specs(settings)
    maps_memory, maps_timing = _maps.specs(settings)
    meta_forward = _meta_forward.specs(settings)
    checker = _checker.specs(settings)
    policies = _maps.policy_specs(settings)
    compiled = _compile.specs(settings)
    tasks = [*meta_timing, *meta_memory, *cpu, *maps_memory, *maps_timing, *policies,
             *meta_forward, *checker, *compiled]
    results = run_specs(
        tasks,
        isolated=settings.isolated,
        threads=settings.threads,
        timeout_s=settings.timeout_s,
        progress=progress,
    )

    def of(task: str) -> list[dict[str, Any]]:
        return [r for r in results if r["task"] == task]

    rows = [
        *_meta.rows(settings, of("meta_time")[0], of("meta_memory")),
        *_cpu.rows(settings, of("cpu_time")),
        *_maps.rows(settings, of("maps_memory"), of("maps_time")[0]),
        *_maps.policy_rows(settings, of("maps_policy")),
        *_meta_forward.rows(settings, of("meta_forward")),
        *_checker.rows(settings, of("checker_time")),
        *_compile.rows(settings, of("compile_time")),
    ]
    with_target = [r for r in rows if r["target"] is not None]
    return {
        "schema": SCHEMA,
        "mode": settings.mode,
        "settings": settings.to_dict(),
        "machine": _machine.describe(),
        "load_average": {"start": load_start, "end": _machine.load_average()},
        "duration_s": time.perf_counter() - start,
        "benchmarks": rows,
        "builds": _builds(results),
        "tasks": [
            {"task": r["task"], "args": r.get("args", {}), "seconds": r.get("seconds")}
            for r in results
        ],
        "errors": [
            {"task": r["task"], "args": r.get("args", {}), "error": r["error"]}
            for r in results
            if r.get("error")
        ],
        "summary": {
            "targets": len(with_target),
            "met": sum(r["met"] is True for r in with_target),
            "missed": [r["id"] for r in with_target if r["met"] is False],
            "unmeasured": [r["id"] for r in with_target if r["met"] is None],
        },
    }
