"""The finiteness of layer outputs on calls that ran without the recorder, read once per trace.

Each checked output leaves one sum on its device; the trace's end stacks them, runs one
``isfinite`` and syncs once per device, instead of once per layer. inf and NaN survive a sum,
and a float32 (float64) sum of finite activations does not overflow, so the flag is exact
without a pass of ``isfinite`` over every value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from shapetrace.journey import LayerRecord
from shapetrace.stages import Check

__all__ = ["FiniteChecks"]


@dataclass
class _Sum:
    record: LayerRecord
    name: str
    total: torch.Tensor
    what: str


def _set_check(item: _Sum, ok: bool) -> None:
    """The verdict of one sum on its record: added, or a pass turned into a fail."""
    checks = item.record.checks
    detail = f"{item.what} finite" if ok else f"{item.what} has NaN or inf"
    for i, check in enumerate(checks):
        if check.name == item.name:
            if check.ok and not ok:
                checks[i] = Check(item.name, False, detail)
            return
    checks.append(Check(item.name, ok, detail))


class FiniteChecks:
    """Sums waiting to be read into their records' checks."""

    def __init__(self) -> None:
        self.sums: list[_Sum] = []

    def add(self, record: LayerRecord, out: Any) -> None:
        """A finite output (a NaN or inf input shows there too), read at ``resolve``."""
        t = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.is_floating_point():
            acc = torch.float64 if t.dtype == torch.float64 else torch.float32
            self.sums.append(_Sum(record, "finite", t.detach().sum(dtype=acc), "output"))
        record.checked = 1

    def resolve(self) -> None:
        """Read the sums (one isfinite and one sync per device and dtype) into the checks."""
        groups: dict[tuple[torch.device, torch.dtype], list[_Sum]] = {}
        for item in self.sums:
            groups.setdefault((item.total.device, item.total.dtype), []).append(item)
        self.sums = []
        for items in groups.values():
            flags = torch.isfinite(torch.stack([i.total for i in items])).tolist()
            for item, ok in zip(items, flags):
                _set_check(item, ok)
