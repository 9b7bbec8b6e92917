"""The golden cases: which journeys `reports/golden/` pins, and how to produce each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shapetrace.journey import Journey

__all__ = ["CASES", "Case", "contract"]


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    height: int
    width: int
    batch: int = 1
    processor: str | None = None

    def run(self, trace_model: Callable[..., Journey]) -> Journey:
        return trace_model(
            self.model,
            height=self.height,
            width=self.width,
            batch=self.batch,
            device="meta",
            processor=self.processor,
        )


def _sd15_cases() -> list[Case]:
    sizes = [(256, 256), (512, 512), (768, 768), (512, 768)]
    cases = []
    for h, w in sizes:
        for b in (1, 2):
            size = f"{h}" if h == w else f"{h}x{w}"
            cases.append(Case(f"sd15-{size}-b{b}", "sd15", h, w, b))
    cases.append(Case("sd15-512-b1-attnprocessor", "sd15", 512, 512, 1, "AttnProcessor"))
    return cases


CASES: tuple[Case, ...] = (
    *_sd15_cases(),
    Case("tiny-64-b2", "tiny", 64, 64, 2),
    Case("reference-256-b1", "reference", 256, 256, 1),
)


def contract(journey: dict[str, Any]) -> dict[str, Any]:
    """The parts of a journey a regression compares: what other code relies on.

    Op chains and notes are left out on purpose: they describe how a library version did its
    work, and a diffusers release may reword them without changing a single dimension.
    """
    layers = []
    for layer in journey["layers"]:
        layers.append(
            {
                "name": layer["name"],
                "call": layer.get("call", 0),
                "kind": layer["kind"],
                "place": layer["place"],
                "resolution": layer["resolution"],
                "processor": layer["processor"],
                "heads": layer["heads"],
                "head_dim": layer["head_dim"],
                "stages": {
                    s["name"]: {"shape": s["shape"], "derived": s.get("derived", False)}
                    for s in layer["stages"]
                },
                "checks": {c["name"]: c["ok"] for c in layer.get("checks", [])},
            }
        )
    keys = ("model", "height", "width", "batch")
    return {**{k: journey.get(k) for k in keys}, "layers": layers}
