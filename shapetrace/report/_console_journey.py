"""``StageJourney``: one layer's journey as a table, laid out for the console's width."""

from __future__ import annotations

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from shapetrace.journey import LayerRecord
from shapetrace.report._explain import StageRow, branch_views, legend, stage_rows
from shapetrace.report._format import DASH, fmt_grid, heads_text, simple_table_width

__all__ = ["OP_WIDTH", "WIDE", "StageJourney"]

#: Consoles at least this wide get the explanations inside the journey table; narrower ones
#: get them as lines under it.
WIDE = 150
#: Long op descriptions wrap at this width.
OP_WIDTH = 32


def _cells(row: StageRow) -> tuple[Text, Text, Text]:
    """The shape, layout and op cells of one row, raw layout on a second line."""
    shape, layout = Text(row.shape), Text(row.layout)
    if row.raw_shape:
        shape.append(f"\nraw {row.raw_shape}", style="dim")
    if row.raw_layout:
        layout.append(f"\n{row.raw_layout}", style="dim")
    op = Text(row.op)
    if row.derived:
        op = Text(row.op if "derived" in row.op else f"{row.op}\nderived", style="dim italic")
        shape.stylize("italic")
    return shape, layout, op


def _width(texts: list[Text], header: str, cap: int | None = None) -> int:
    widest = max(
        [cell_len(header)] + [cell_len(line) for t in texts for line in t.plain.split("\n")]
    )
    return widest if cap is None else min(widest, cap)


class StageJourney:
    """One layer's journey, stage by stage, titled with its full name.

    Derived stages (the scores and probabilities of fused SDPA, computed beside the layer) are
    marked ``derived`` in dim italics; the code's own layout, e.g. ``(B*H, N, d)``, is shown
    under the normalized shape when it differed. Wide consoles get one table; narrower ones
    get the explanations as lines under it, and the ops there too when the table would not
    fit with them.

    >>> Console().print(StageJourney(journey_256.cross[0]))  # doctest: +SKIP
    Journey: down_blocks.0.attentions.0.transformer_blocks.0.attn2
      step   stage         shape              layout         op
         5   key           (1, 77, 320)       (B, M, C)      linear 768→320 (to_k)
        11   probs         (1, 8, 1024, 77)   (B, H, N, M)   derived: softmax(q kᵀ · 0.1581) ...
    """

    def __init__(self, layer: LayerRecord) -> None:
        self.layer = layer

    def _title(self) -> RenderResult:
        layer = self.layer
        title = Text("Journey: ", style="bold")
        title.append(layer.name, style="bold")
        if layer.call:
            title.append(f" (call {layer.call})")
        yield title
        facts = [
            f"{layer.kind}-attention",
            f"place {layer.place}",
            f"grid {fmt_grid(layer.resolution)}",
            heads_text(layer.heads, layer.head_dim),
            f"processor {layer.processor or DASH}",
        ]
        yield Text(" · ".join(facts), style="dim")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self._title()
        rows = stage_rows(self.layer)
        cells = [_cells(row) for row in rows]
        inline = options.max_width >= WIDE
        widths = [
            _width([Text(str(r.step)) for r in rows], "step"),
            _width([Text(r.name) for r in rows], "stage"),
            _width([c[0] for c in cells], "shape"),
            _width([c[1] for c in cells], "layout"),
        ]
        op_width = _width([c[2] for c in cells], "op", OP_WIDTH)
        with_op = inline or simple_table_width([*widths, op_width]) <= options.max_width
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("step", justify="right")
        table.add_column("stage", no_wrap=True)
        table.add_column("shape", no_wrap=True)
        table.add_column("layout", no_wrap=True)
        if with_op:
            table.add_column("op", overflow="fold", max_width=OP_WIDTH)
        if inline:
            table.add_column("what happens", ratio=1)
        for row, (shape, layout, op) in zip(rows, cells, strict=True):
            line: list[Text | str] = [str(row.step), row.name, shape, layout]
            if with_op:
                line.append(op)
            if inline:
                line.append(row.explanation)
            table.add_row(*line)
        yield table
        if not inline:
            notes = Table.grid(padding=(0, 1))
            notes.add_column(justify="right")
            notes.add_column(no_wrap=True)
            notes.add_column()
            for row, (_, _, op) in zip(rows, cells, strict=True):
                text = Text()
                if not with_op:
                    op_text = op.plain.replace("\n", " ")
                    text.append(f"[{op_text}] ", style="dim italic" if row.derived else "dim")
                text.append(row.explanation or DASH)
                notes.add_row(str(row.step), row.name, text)
            yield notes
        yield Text(legend(self.layer), style="dim")
        for view in branch_views(self.layer):
            branch = Table(title=view.title, title_justify="left", box=box.SIMPLE_HEAD)
            for header in ("stage", "shape", "op"):
                branch.add_column(header, overflow="fold")
            for name, shape_text, op_text in view.rows:
                branch.add_row(Text(name), Text(shape_text), Text(op_text))
            yield branch
