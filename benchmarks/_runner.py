"""Runs task specs in worker processes: a fresh one per task (isolated) or one for all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["run_specs"]

_ROOT = Path(__file__).resolve().parent.parent
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _batch(
    tasks: list[dict[str, Any]], *, threads: int, timeout_s: int, extra_env: dict[str, str]
) -> list[dict[str, Any]]:
    """Run ``tasks`` in one worker; a failed or missing result becomes an error entry."""
    env = {**os.environ, **{v: str(threads) for v in _THREAD_VARS}, **extra_env}
    # the worker imports `benchmarks` from the repository root, wherever the bench was run from
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_ROOT), env.get("PYTHONPATH"))))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="shapetrace-bench-") as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps({"threads": threads, "tasks": tasks}))
        cmd = [sys.executable, "-m", "benchmarks._worker", str(src), str(dst)]
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
            )
            why = f"worker exited with {proc.returncode}: {proc.stderr.strip()[-600:]}"
        except subprocess.TimeoutExpired:
            why = f"worker timed out after {timeout_s} s"
        done: list[dict[str, Any]] = json.loads(dst.read_text()) if dst.exists() else []
    for spec in tasks[len(done):]:
        done.append({"task": spec["task"], "args": spec.get("args", {}), "error": why})
    return done


def run_specs(
    tasks: list[dict[str, Any]],
    *,
    isolated: bool,
    threads: int,
    timeout_s: int,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Results of ``tasks`` in order: each in a fresh worker process when ``isolated`` (with
    the task's own ``env`` added), else all in one (task ``env`` ignored). ``progress`` is
    told each task's name as it finishes."""
    if not isolated:
        results = _batch(tasks, threads=threads, timeout_s=timeout_s, extra_env={})
        if progress is not None:
            progress(f"{len(results)} tasks in one worker")
        return results
    out: list[dict[str, Any]] = []
    for i, spec in enumerate(tasks, 1):
        env = {str(k): str(v) for k, v in spec.get("env", {}).items()}
        out.extend(_batch([spec], threads=threads, timeout_s=timeout_s, extra_env=env))
        if progress is not None:
            err = " (error)" if out[-1].get("error") else ""
            progress(f"[{i}/{len(tasks)}] {spec['task']} {spec.get('args', {})}{err}")
    return out
