"""The console report as Markdown: header, layer table, resolution explainer and journeys.

User-provided text (model and layer names, processor names, notes) is escaped so it cannot
break a table or inject HTML.

>>> print(to_markdown(journey))  # doctest: +SKIP
# shapetrace: sd15 at 512×512
...
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shapetrace.journey import Journey, LayerRecord
from shapetrace.report._explain import branch_views, legend, stage_rows
from shapetrace.report._format import DASH, fmt_grid, heads_text
from shapetrace.report._levels import block_columns, levels, resolution_lines
from shapetrace.report._summary import header_facts, summary_rows

__all__ = ["escape", "to_markdown"]

_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def escape(text: object) -> str:
    """``text`` made safe for a Markdown table cell or paragraph.

    >>> escape("a|b <c> `d`")
    'a\\\\|b &lt;c&gt; \\\\`d\\\\`'
    """
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _SPECIAL.sub(r"\\\1", s)
    return " ".join(s.splitlines()) if "\n" in s or "\r" in s else s


def _code(text: str) -> str:
    """A shape or layout we generated ourselves (digits, letters, commas) as inline code."""
    return f"`{text}`" if text and text != DASH else DASH


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _header(journey: Journey) -> list[str]:
    size = (
        f" at {journey.height}×{journey.width}"
        if journey.height is not None and journey.width is not None
        else ""
    )
    lines = [f"# shapetrace: {escape(journey.model or 'attention journey')}{size}", ""]
    lines += _table(["", ""], [[f"**{k}**", escape(v)] for k, v in header_facts(journey)], set())
    return lines


def _summary(journey: Journey, layers: Sequence[LayerRecord] | None) -> list[str]:
    rows = summary_rows(journey, None if layers is None else list(layers))
    chosen = journey.layers if layers is None else layers
    checked = any(layer.checks for layer in chosen)
    header = ["#", "layer", "kind", "place", "grid h×w", "N", "M", "C", "H×d", "scores"]
    header += ["processor"] + (["ok"] if checked else [])
    body = []
    for r in rows:
        cells = [str(r.index), escape(r.name), escape(r.kind), escape(r.place), r.grid]
        cells += [r.tokens, r.context, r.width, r.heads, _code(r.scores), escape(r.processor)]
        if checked:
            cells.append(DASH if r.check is None else "✓" if r.check else "✗")
        body.append(cells)
    lines = ["## Attention layers", "", *_table(header, body, {0, 4, 5, 6, 7, 8})]
    bad = [(layer, c) for layer in chosen for c in layer.checks if not c.ok]
    if bad:
        lines.append("")
        for layer, check in bad:
            detail = f": {escape(check.detail)}" if check.detail else ""
            lines.append(f"- ✗ **{escape(layer.name)}**: {escape(check.name)}{detail}")
    return lines


def _resolution(journey: Journey) -> list[str]:
    found = levels(journey)
    blocks = block_columns(found)
    header = ["level", "grid h×w", "tokens N", "channels", "H×d", *(h for h, _ in blocks)]
    body = [
        [
            DASH if lv.index is None else str(lv.index),
            lv.grid_text,
            DASH if lv.tokens is None else str(lv.tokens),
            str(lv.channels),
            f"{lv.heads}×{lv.head_dim}",
            *(escape(lv.blocks_text(kind)) for _, kind in blocks),
        ]
        for lv in found
    ]
    lines = ["## Image size → tokens", "", *_table(header, body, {0, 1, 2, 3, 4}), ""]
    for line in resolution_lines(journey, found):
        lines += [escape(line), ""]
    return lines[:-1]


def _journey(layer: LayerRecord) -> list[str]:
    call = f" (call {layer.call})" if layer.call else ""
    facts = [
        f"{escape(layer.kind)}-attention",
        f"place {escape(layer.place)}",
        f"grid {fmt_grid(layer.resolution)}",
        heads_text(layer.heads, layer.head_dim),
        f"processor {escape(layer.processor or DASH)}",
    ]
    lines = [f"## Journey: {escape(layer.name)}{call}", "", " · ".join(facts), ""]
    header = ["step", "stage", "shape", "layout", "op", "what happens"]
    body = []
    for row in stage_rows(layer):
        shape, layout = _code(row.shape), _code(row.layout)
        if row.raw_shape:
            shape += f"<br>raw {_code(row.raw_shape)}"
        if row.raw_layout:
            layout += f"<br>{_code(row.raw_layout)}"
        op = escape(row.op)
        if row.derived:
            op = f"*{op}*" if "derived" in row.op else f"{op}<br>*derived*"
            shape = f"*{shape}*"
        body.append([str(row.step), escape(row.name), shape, layout, op, escape(row.explanation)])
    lines += _table(header, body, {0})
    lines += ["", escape(legend(layer))]
    for view in branch_views(layer):
        rows = [[escape(name), _code(shape), escape(op)] for name, shape, op in view.rows]
        table = _table(["stage", "shape", "op"], rows, set())
        lines += ["", f"### {escape(view.title)}", "", *table]
    return lines


def to_markdown(
    journey: Journey,
    layers: Sequence[LayerRecord] | None = None,
    *,
    summary: Sequence[LayerRecord] | None = None,
) -> str:
    """The report as a Markdown document (GitHub-flavoured tables), ending in a newline.

    ``layers``: whose journeys to show (default: the first cross-attention layer);
    ``summary``: the layers in the table (default: all).

    >>> print(to_markdown(journey_256))  # doctest: +SKIP
    ...
    | 10 | scores | *`(1, 8, 1024, 77)`* | `(B, H, N, M)` | *derived: q kᵀ · scale ...* | ... |
    """
    chosen = list(journey.cross[:1] or journey.layers[:1]) if layers is None else list(layers)
    parts = [_header(journey), _summary(journey, summary)]
    if journey.not_understood:
        rows = [[escape(n.name), escape(n.module_type), escape(n.reason)]
                for n in journey.not_understood]
        parts.append(["## Not understood", "", *_table(["layer", "type", "why"], rows, set())])
    parts.append(_resolution(journey))
    parts += [_journey(layer) for layer in chosen]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"
