"""The worker process: ``python -m benchmarks._worker IN.json OUT.json``.

IN holds ``{"threads": n, "tasks": [{"task": name, "args": {...}}, ...]}``; OUT receives, after
each task, the list of results so far, each ``{"task", "args", "seconds", ...}`` with the task's
own fields, or ``"error"`` (type, message and the last lines of the traceback) if it raised.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TASKS", "main", "run_task"]


def _tasks() -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    from benchmarks import _checker, _compile, _cpu, _maps, _meta, _meta_forward

    return {
        "compile_time": _compile.time_task,
        "checker_time": _checker.time_task,
        "meta_forward": _meta_forward.time_task,
        "meta_time": _meta.time_task,
        "meta_memory": _meta.memory_task,
        "cpu_time": _cpu.time_task,
        "maps_memory": _maps.memory_task,
        "maps_time": _maps.time_task,
        "maps_policy": _maps.policy_task,
    }


TASKS = (
    "meta_time", "meta_memory", "cpu_time", "maps_memory", "maps_time", "meta_forward",
    "checker_time", "maps_policy", "compile_time",
)


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one task spec; its result with ``task``, ``args`` and ``seconds`` added."""
    name, args = spec["task"], dict(spec.get("args", {}))
    start = time.perf_counter()
    head: dict[str, Any] = {"task": name, "args": args}
    try:
        task = _tasks()[name]
        result = task(args)
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": tail}
    return {**head, **result, "seconds": time.perf_counter() - start}


def preload() -> float:
    """Import what every task needs (diffusers and transformers load lazily), so no timed
    part and no build time includes an import; the seconds it took."""
    start = time.perf_counter()
    import diffusers
    import torch  # noqa: F401
    import transformers

    _ = diffusers.UNet2DConditionModel, diffusers.PNDMScheduler, transformers.CLIPTextModel
    import shapetrace.maps.pipeline
    import shapetrace.report
    import shapetrace.tracing  # noqa: F401

    with contextlib.suppress(ImportError):  # without it, the torchinfo rows record the error
        import torchinfo  # noqa: F401
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the tasks of IN, writing OUT after each one."""
    src, dst = (argv if argv is not None else sys.argv[1:])[:2]
    plan = json.loads(Path(src).read_text())
    import_s: float | None = preload()
    import torch

    torch.set_num_threads(int(plan["threads"]))
    results: list[dict[str, Any]] = []
    for spec in plan["tasks"]:
        results.append({**run_task(spec), "import_s": import_s})
        import_s = None  # only a fresh worker's first task paid for the imports
        Path(dst).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
