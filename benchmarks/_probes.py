"""What a worker measures around a workload: wall and CPU time, peak RSS, Python heap peak.

Peak RSS is Linux's ``VmHWM``; writing ``5`` to ``/proc/self/clear_refs`` resets it to the
current RSS, so the peak of one workload is read as ``VmHWM - VmRSS`` at its start. Where that
reset is not possible the delta is None and only the process's absolute peak is reported.
"""

from __future__ import annotations

import gc
import re
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Peak", "Timing", "python_heap_peak", "rss_peak", "status_kib", "timed"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def status_kib(field: str) -> int | None:
    """One ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False when the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Timing:
    """Wall seconds (``perf_counter``) and CPU seconds of all threads (``process_time``)."""

    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    """Run ``fn`` once; its Timing and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), out


@dataclass(frozen=True)
class Peak:
    """Peak RSS of one run: ``delta`` bytes above the RSS at its start (None if the peak
    could not be reset), ``hwm`` the process's peak RSS in bytes after it."""

    delta: int | None
    hwm: int | None
    start: int | None


def rss_peak(fn: Callable[[], Any]) -> tuple[Peak, Any]:
    """Run ``fn`` once after a garbage collection and a peak reset; its Peak and result."""
    gc.collect()
    reset = _reset_peak()
    start = status_kib("VmRSS")
    out = fn()
    hwm = status_kib("VmHWM")
    if hwm is None or start is None:
        return Peak(None, None, None), out
    return Peak((hwm - start) * 1024 if reset else None, hwm * 1024, start * 1024), out


def python_heap_peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak bytes of Python allocations (``tracemalloc``) while ``fn`` runs, and its result.

    Torch's tensor storage does not go through Python's allocator: on CPU it is not counted.
    """
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak), out
