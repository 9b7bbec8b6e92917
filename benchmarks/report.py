"""Writing the bench document: ``bench.json`` and ``bench.md`` in one folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks._markdown import to_markdown

__all__ = ["write_reports"]


def write_reports(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``out/bench.json`` and ``out/bench.md`` (creating ``out``); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "bench.json", out / "bench.md"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path.write_text(to_markdown(doc))
    return json_path, md_path
