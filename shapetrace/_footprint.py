"""What a run will cost, known before it starts: memory (weights, activations, capture) and
time, from one forward of the model on ``meta`` (no weights, no compute).

During that forward a dispatch mode adds up the bytes of every tensor created and subtracts
them when the tensor is freed (the peak is the forward's activations), and torch's
``FlopCounterMode`` counts the floating-point work; a short matmul on the run's device gives
its speed::

    >>> with count_forward() as cost:                                  # doctest: +SKIP
    ...     meta_unet(*args, **kwargs)
    >>> cost.flops, format_bytes(cost.peak_bytes)                      # doctest: +SKIP
    (1606546882560, '1.2 GiB')
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from shapetrace._checks import format_bytes

__all__ = [
    "ACTIVATION_FACTOR",
    "Estimate",
    "ForwardCost",
    "activation_bytes",
    "available_memory",
    "count_forward",
    "device_speed",
    "weight_bytes",
]

#: A traced CPU forward's peak above its weights was the meta peak plus 50 to 250 MiB
#: (allocator slack, convolution workspaces: tiny at 256, SD 1.5 at 256 and 512, fused and
#: AttnProcessor); the estimate is the meta peak x ACTIVATION_FACTOR + ACTIVATION_BASE.
ACTIVATION_FACTOR = 1.1
ACTIVATION_BASE = 256 * 2**20
#: The fraction of :func:`device_speed` a UNet forward reaches: 0.8 for one thread on a quiet
#: 2-core CPU (reports/bench.md: an SD 1.5 forward at 256, 180 GFLOP in 2.8 s, against an
#: 80 GFLOP/s matmul), 0.26 for the README's sd15 maps example on the same machine under a
#: load of 6 (11 forwards of batch 2, 17.7 TFLOP in 7 min 41 s). The estimate takes 0.4.
EFFICIENCY = 0.4
#: What a traced attention call costs beyond its FLOPs (hooks, recorder, monitors): the
#: tiny UNet's 32 calls add 18 ms to a forward (reports/bench.md, cpu_tiny_wall).
PER_CALL_SECONDS = 0.001


@dataclass
class ForwardCost:
    """One forward's peak bytes of live tensors (activations), FLOPs and attention calls."""

    peak_bytes: int = 0
    flops: int = 0


class _LiveBytes(TorchDispatchMode):
    """Bytes of tensors alive now and at most, counting a storage once however many views."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        left = self.refs.get(key, 0) - 1
        if left > 0:
            self.refs[key] = left
        elif key in self.refs:
            del self.refs[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage._cdata, storage.nbytes()
                if key not in self.refs:
                    self.refs[key] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key, nbytes)
        return out


class _FusedAttention(TorchFunctionMode):
    """Fused attention on meta as the CPU and CUDA kernels run it: no (B, H, N, M) scores.

    On meta, ``scaled_dot_product_attention`` decomposes into the math kernel, which holds
    the scores and probabilities that flash attention never materializes; without a mask it
    is answered here with its output's shape, and its FLOPs (q kᵀ and probs v) are counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and len(args) >= 3:
            q, k, v = args[:3]
            if q.device.type == "meta" and kwargs.get("attn_mask") is None and len(args) == 3:
                n, m, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
                batch = q.numel() // (n * d)
                self.flops += 2 * batch * n * m * (d + dv)
                return torch.empty((*q.shape[:-1], dv), device="meta", dtype=q.dtype)
        return func(*args, **kwargs)


@contextmanager
def count_forward() -> Iterator[ForwardCost]:
    """Count what the forwards run inside the block allocate and compute (use on meta)."""
    from torch.utils.flop_counter import FlopCounterMode

    cost = ForwardCost()
    live = _LiveBytes()
    flops = FlopCounterMode(display=False)
    fused = _FusedAttention()
    with torch.no_grad(), flops, live, fused:
        yield cost
    cost.peak_bytes = live.peak
    cost.flops = int(flops.get_total_flops()) + fused.flops


def activation_bytes(cost: ForwardCost, *, scale: float = 1.0) -> int:
    """The activations a real forward needs, from a meta forward's peak; ``scale`` converts
    from the meta pass's dtype (0.5 for a float16 run of a float32 meta pass)."""
    return int(cost.peak_bytes * scale * ACTIVATION_FACTOR) + ACTIVATION_BASE


def weight_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the parameters and buffers once cast to ``dtype`` (floating ones only)."""
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        total += t.numel() * (size if t.dtype.is_floating_point else t.element_size())
    return total


def _meminfo() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What a cgroup (v2) memory limit leaves, where the process runs in one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device) -> int | None:
    """Bytes a run on ``device`` can still take (None on meta: it takes none).

    >>> available_memory(torch.device("meta")) is None
    True
    """
    if device.type == "meta":
        return None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    rooms = [r for r in (_meminfo(), _cgroup_room()) if r is not None]
    return min(rooms) if rooms else None


@cache
def device_speed(device: torch.device) -> float:
    """Floating-point operations per second of float32 matmuls on ``device``, the best of
    five short windows (about 0.2 s in all). On CPU one thread is timed and multiplied by the
    threads torch uses: timed together, threads wait on each other whenever another job holds
    a core, and a shared machine would look several times slower than it is."""
    side = 512
    a = torch.randn(side, side, device=device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for _ in range(3):  # thread pools and kernels warm up first
            a @ a
        _sync(device)
        best = 0.0
        for _ in range(5):
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < 0.04 or done < 2:
                a @ a
                done += 1
            _sync(device)
            best = max(best, 2 * side**3 * done / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    return best * (threads if device.type == "cpu" else 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Estimate:
    """What a run needs: bytes of ``weights``, ``activations`` and ``capture``, and seconds."""

    weights: int
    activations: int
    capture: int = 0
    seconds: float | None = None

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.capture

    def memory_text(self) -> str:
        """'about 4.6 GiB (weights 3.7 GiB, activations 0.8 GiB, capture 4.7 MiB)'."""
        parts = [f"weights {format_bytes(self.weights)}"]
        parts.append(f"activations {format_bytes(self.activations)}")
        if self.capture:
            parts.append(f"capture {format_bytes(self.capture)}")
        return f"about {format_bytes(self.total)} ({', '.join(parts)})"

    def time_text(self) -> str:
        """'about 3 min' (rough), or '' when unknown."""
        if self.seconds is None:
            return ""
        s = self.seconds
        if s < 1:
            return "under a second"
        if s < 90:
            return f"about {s:.0f} s"
        if s < 5400:
            return f"about {s / 60:.0f} min"
        return f"about {s / 3600:.1f} h"


def estimate_seconds(
    cost: ForwardCost, device: torch.device, *, forwards: int = 1, calls: int = 0
) -> float | None:
    """Rough seconds for ``forwards`` forwards of ``cost`` with ``calls`` traced attention
    calls each; None on meta (nothing is computed)."""
    if device.type == "meta":
        return None
    per_forward = cost.flops / (device_speed(device) * EFFICIENCY) + calls * PER_CALL_SECONDS
    return forwards * per_forward
