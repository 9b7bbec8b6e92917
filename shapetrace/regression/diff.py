"""Differences between a golden journey and a fresh one, layer by layer and stage by stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

__all__ = ["Change", "DiffTable", "diff_contracts"]


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
        if name not in new:
            continue
        a, b = old[name], new[name]
        for field in ("kind", "place", "resolution", "processor", "heads", "head_dim"):
            if a[field] != b[field]:
                changes.append(Change(case, name, "-", field, a[field], b[field]))
        for stage in a["stages"].keys() | b["stages"].keys():
            sa, sb = a["stages"].get(stage), b["stages"].get(stage)
            if sa is None or sb is None:
                changes.append(
                    Change(
                        case,
                        name,
                        stage,
                        "stage",
                        "absent" if sa is None else "present",
                        "new" if sa is None else "missing",
                    )
                )
                continue
            for field in ("shape", "derived"):
                if sa[field] != sb[field]:
                    changes.append(Change(case, name, stage, field, sa[field], sb[field]))
        for check in a["checks"].keys() | b["checks"].keys():
            if a["checks"].get(check) != b["checks"].get(check):
                changes.append(
                    Change(
                        case,
                        name,
                        "-",
                        f"check {check}",
                        a["checks"].get(check),
                        b["checks"].get(check),
                    )
                )
    return changes


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(str(v) for v in value) + ")"
    return str(value)


class DiffTable:
    """A rich table of changes: case, layer, stage, what changed, golden → now."""

    def __init__(self, changes: list[Change], *, limit: int = 60) -> None:
        self.changes = changes
        self.limit = limit

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = Table(title=f"{len(self.changes)} change(s) against the golden journeys")
        for column in ("case", "layer", "stage", "field", "golden", "now"):
            table.add_column(column, overflow="fold")
        for c in self.changes[: self.limit]:
            table.add_row(
                c.case, c.layer, c.stage, c.field, _show(c.golden), _show(c.now), style="red"
            )
        yield table
        if len(self.changes) > self.limit:
            yield f"... and {len(self.changes) - self.limit} more"
