"""Golden journeys: the cases ``reports/golden/`` pins, the part of a journey they compare, and
the differences between a golden journey and a fresh one, layer by layer and stage by stage.

The parametrized test is ``tests/test_golden.py``; ``pytest tests/test_golden.py --overwrite``
(or ``nox -s regression -- --overwrite``) rewrites the files on purpose.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shapetrace.journey import Journey

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "reports" / "golden"


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    height: int | None = None  # None: the model's native size
    width: int | None = None
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

    def path(self, directory: Path = GOLDEN_DIR) -> Path:
        return directory / f"{self.name}.json"


def _sd15_cases() -> list[Case]:
    cases = []
    for h, w in [(256, 256), (512, 512), (768, 768), (512, 768)]:
        for b in (1, 2):
            size = f"{h}" if h == w else f"{h}x{w}"
            cases.append(Case(f"sd15-{size}-b{b}", "sd15", h, w, b))
    cases.append(Case("sd15-512-b1-attnprocessor", "sd15", 512, 512, 1, "AttnProcessor"))
    return cases


#: Every preset at its native size (SD 2.1 at 768, SDXL, SD3, Flux and PixArt at 1024), and
#: the text encoders whose configs ship with the presets.
NATIVE: tuple[Case, ...] = (
    Case("sd21-768-b1", "sd21"),
    Case("sdxl-1024-b1", "sdxl"),
    Case("sd3-1024-b1", "sd3"),
    Case("flux-1024-b1", "flux"),
    Case("pixart-1024-b1", "pixart"),
    Case("sd15-text-encoder-b1", "sd15:text_encoder"),
    Case("sd21-text-encoder-b1", "sd21:text_encoder"),
    Case("sdxl-text-encoder-2-b1", "sdxl:text_encoder_2"),
)

CASES: tuple[Case, ...] = (
    *_sd15_cases(),
    *NATIVE,
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
                "segments": layer.get("segments", {}),
                "branches": {
                    b["name"]: {s["name"]: s["shape"] for s in b["stages"]}
                    for b in layer.get("branches", [])
                },
            }
        )
    keys = ("model", "height", "width", "batch")
    return {**{k: journey.get(k) for k in keys}, "layers": layers}


@dataclass(frozen=True)
class Change:
    case: str
    layer: str
    stage: str
    field: str
    golden: Any
    now: Any


def _key(layer: dict[str, Any]) -> str:
    return f"{layer['name']}#{layer['call']}" if layer.get("call") else layer["name"]


def diff_contracts(case: str, golden: dict[str, Any], now: dict[str, Any]) -> list[Change]:
    """Every difference between two ``contract()`` projections, as ``Change`` rows."""
    changes: list[Change] = []
    for field in ("model", "height", "width", "batch"):
        if golden.get(field) != now.get(field):
            changes.append(Change(case, "-", "-", field, golden.get(field), now.get(field)))
    old = {_key(layer): layer for layer in golden["layers"]}
    new = {_key(layer): layer for layer in now["layers"]}
    for name in old.keys() - new.keys():
        changes.append(Change(case, name, "-", "layer", "present", "missing"))
    for name in new.keys() - old.keys():
        changes.append(Change(case, name, "-", "layer", "absent", "new"))
    order = [_key(layer) for layer in golden["layers"]]
    if [k for k in order if k in new] != [_key(x) for x in now["layers"] if _key(x) in old]:
        changes.append(Change(case, "-", "-", "call order", "golden order", "changed"))
    for name in order:
        if name in new:
            changes += _diff_layer(case, name, old[name], new[name])
    return changes


def _diff_layer(case: str, name: str, a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    changes = []
    for field in (
        "kind",
        "place",
        "resolution",
        "processor",
        "heads",
        "head_dim",
        "segments",
        "branches",
    ):
        if a.get(field) != b.get(field):
            changes.append(Change(case, name, "-", field, a.get(field), b.get(field)))
    for stage in sorted(a["stages"].keys() | b["stages"].keys()):
        sa, sb = a["stages"].get(stage), b["stages"].get(stage)
        if sa is None or sb is None:
            was, now = ("absent", "new") if sa is None else ("present", "missing")
            changes.append(Change(case, name, stage, "stage", was, now))
            continue
        for field in ("shape", "derived"):
            if sa[field] != sb[field]:
                changes.append(Change(case, name, stage, field, sa[field], sb[field]))
    for check in sorted(a["checks"].keys() | b["checks"].keys()):
        if a["checks"].get(check) != b["checks"].get(check):
            was, now = a["checks"].get(check), b["checks"].get(check)
            changes.append(Change(case, name, "-", f"check {check}", was, now))
    return changes


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(str(v) for v in value) + ")"
    return str(value)


def diff_table(changes: list[Change], *, limit: int = 60) -> str:
    """The changes as plain text of a rich table: case, layer, stage, field, golden -> now."""
    table = Table(title=f"{len(changes)} change(s) against the golden journeys")
    for column in ("case", "layer", "stage", "field", "golden", "now"):
        table.add_column(column, overflow="fold")
    for c in changes[:limit]:
        table.add_row(c.case, c.layer, c.stage, c.field, _show(c.golden), _show(c.now))
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    console.print(table)
    if len(changes) > limit:
        console.print(f"... and {len(changes) - limit} more")
    return out.getvalue()


def compare_file(case: Case, journey: Journey, path: Path) -> list[Change]:
    """How ``journey`` differs from the golden file at ``path`` (a missing file is a change)."""
    if not path.exists():
        return [Change(case.name, "-", "-", "golden file", "missing", str(path))]
    golden = contract(json.loads(path.read_text()))
    return diff_contracts(case.name, golden, contract(journey.to_dict()))


def write_file(journey: Journey, path: Path) -> None:
    """Write a golden journey (a temporary name, then a rename: never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(journey.to_json(indent=1) + "\n")
    tmp.replace(path)
