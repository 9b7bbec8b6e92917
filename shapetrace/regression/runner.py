"""``python -m shapetrace.regression [--overwrite] [--golden DIR] [--case NAME ...]``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from shapetrace.journey import Journey
from shapetrace.regression.cases import CASES, Case, contract
from shapetrace.regression.diff import Change, DiffTable, diff_contracts

__all__ = ["DEFAULT_DIR", "compare", "main", "write"]

DEFAULT_DIR = Path("reports/golden")


def _trace_model() -> Callable[..., Journey]:
    from shapetrace.tracing.run import trace_model

    return trace_model


def _path(directory: Path, case: Case) -> Path:
    return directory / f"{case.name}.json"


def write(directory: Path, cases: Sequence[Case] = CASES) -> list[Path]:
    """Regenerate the golden journeys of ``cases`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    run = _trace_model()
    paths = []
    for case in cases:
        path = _path(directory, case)
        path.write_text(case.run(run).to_json(indent=1) + "\n")
        paths.append(path)
    return paths


def compare(directory: Path, cases: Sequence[Case] = CASES) -> list[Change]:
    """Trace every case afresh and list how it differs from its golden file."""
    run = _trace_model()
    changes: list[Change] = []
    for case in cases:
        path = _path(directory, case)
        if not path.exists():
            changes.append(Change(case.name, "-", "-", "golden file", "missing", str(path)))
            continue
        golden = contract(json.loads(path.read_text()))
        changes += diff_contracts(case.name, golden, contract(case.run(run).to_dict()))
    return changes


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shapetrace.regression", description=__doc__)
    parser.add_argument("--golden", type=Path, default=DEFAULT_DIR, help="golden folder")
    parser.add_argument("--overwrite", action="store_true", help="rewrite the golden files")
    parser.add_argument("--case", action="append", help="only these cases (repeatable)")
    args = parser.parse_args(argv)
    console = console or Console()
    cases = [c for c in CASES if not args.case or c.name in args.case]
    unknown = set(args.case or ()) - {c.name for c in CASES}
    if unknown:
        names = ", ".join(c.name for c in CASES)
        console.print(f"unknown case(s) {', '.join(sorted(unknown))}; known: {names}")
        return 2
    if args.overwrite:
        for path in write(args.golden, cases):
            console.print(f"wrote {path}")
        return 0
    changes = compare(args.golden, cases)
    if changes:
        console.print(DiffTable(changes))
        console.print(
            "[red]The dimension journey changed.[/] If the change is intended, rewrite the "
            "goldens with `nox -s regression -- --overwrite` and commit them."
        )
        return 1
    console.print(f"[green]{len(cases)} golden journeys match[/] ({args.golden})")
    return 0
