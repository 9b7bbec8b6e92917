"""Samples, medians and ratios: how one benchmark row is computed from its raw samples.

>>> row = compare("x", "demo", Series("traced", [1.1, 1.0, 1.2]), Series("plain", [1.0, 1.0]),
...               unit="s", target=Target(1.05, "at most 5% overhead"))
>>> round(row["ratio"], 3), row["met"]
(1.1, False)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Series", "Target", "compare", "median", "series_dict"]


def median(samples: list[float]) -> float | None:
    """The median of ``samples``, or None when there are none."""
    return float(statistics.median(samples)) if samples else None


@dataclass
class Series:
    """The raw samples of one side of a comparison (``label`` says what ran), or the
    ``error`` text that replaced them when the workload failed."""

    label: str
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return median(self.samples)


@dataclass(frozen=True)
class Target:
    """Pass when ``subject median / baseline median <= max_ratio``; ``text`` says it in words."""

    max_ratio: float
    text: str


def series_dict(series: Series) -> dict[str, Any]:
    """A series as JSON: label, samples, n, median and error."""
    return {
        "label": series.label,
        "samples": list(series.samples),
        "n": len(series.samples),
        "median": series.median,
        "error": series.error,
    }


def _paired_ratios(subject: Series, baseline: Series) -> list[float]:
    """Per-pair ratios when both sides were sampled in interleaved pairs."""
    if len(subject.samples) != len(baseline.samples):
        return []
    return [s / b for s, b in zip(subject.samples, baseline.samples) if b > 0]


def compare(
    key: str,
    title: str,
    subject: Series,
    baseline: Series,
    *,
    unit: str,
    group: str = "",
    target: Target | None = None,
    paired: bool = False,
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One benchmark row ``key``: both series, ratio = median(subject) / median(baseline), the
    change in percent, the target and whether it was met (None when there is no ratio or
    no target). With ``paired`` the median of the per-pair ratios is added as a check."""
    s, b = subject.median, baseline.median
    ratio = s / b if s is not None and b is not None and b > 0 else None
    met = None if ratio is None or target is None else bool(ratio <= target.max_ratio)
    row: dict[str, Any] = {
        "id": key,
        "group": group,
        "title": title,
        "unit": unit,
        "subject": series_dict(subject),
        "baseline": series_dict(baseline),
        "ratio": ratio,
        "change_pct": None if ratio is None else (ratio - 1.0) * 100.0,
        "target": None if target is None else {"max_ratio": target.max_ratio, "text": target.text},
        "met": met,
        "note": note,
        "extra": dict(extra or {}),
    }
    if paired:
        pairs = _paired_ratios(subject, baseline)
        row["paired_ratio_median"] = median(pairs)
    return row
