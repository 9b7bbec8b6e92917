"""``LayerSummary``: the table of every attention call, narrowed to fit the console."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from shapetrace.journey import Journey, LayerRecord
from shapetrace.report._format import DASH, simple_table_width
from shapetrace.report._summary import SummaryRow, summary_rows

__all__ = ["BAD_MARK", "OK_MARK", "LayerSummary"]

OK_MARK = "✓"
BAD_MARK = "✗"


@dataclass(frozen=True)
class _Column:
    header: str
    cell: Callable[[SummaryRow], Text | str]
    right: bool = False
    drop: int = 0  # 0: always shown; otherwise dropped, highest first, when the console is narrow


def _mark(ok: bool | None) -> Text:
    if ok is None:
        return Text(DASH)
    return Text(OK_MARK, style="green") if ok else Text(BAD_MARK, style="bold red")


_COLUMNS = (
    _Column("#", lambda r: str(r.index), right=True, drop=1),
    _Column("layer", lambda r: Text(r.name)),
    _Column("kind", lambda r: Text(r.kind)),
    _Column("place", lambda r: Text(r.place), drop=4),
    _Column("grid h×w", lambda r: r.grid, right=True),
    _Column("N", lambda r: r.tokens, right=True),
    _Column("M", lambda r: r.context, right=True),
    _Column("C", lambda r: r.width, right=True, drop=3),
    _Column("H×d", lambda r: r.heads, right=True, drop=2),
    _Column("scores", lambda r: r.scores),
)
_PROCESSOR = _Column("processor", lambda r: Text(r.processor), drop=5)
_CHECK = _Column("ok", lambda r: _mark(r.check))


def _needed(rows: list[SummaryRow], columns: list[_Column]) -> int:
    """The width a SIMPLE_HEAD table of these cells takes unwrapped: each column plus one
    space of padding either side, one divider between columns and one at each edge."""
    widths = [
        max([cell_len(col.header)] + [cell_len(str(col.cell(r))) for r in rows]) for col in columns
    ]
    return simple_table_width(widths)


class LayerSummary:
    """One row per attention call: grid, tokens N, context M, width C, heads, scores shape.

    A processor column appears when layers ran different processors (otherwise the header
    names it), a check column when layers carry runtime checks; failed checks are listed
    under the table. On a narrow console the least needed columns go first (processor,
    place, C, H×d, #) so layer names and shapes are never cut.

    >>> Console().print(LayerSummary(journey_256))  # doctest: +SKIP
      #   layer            kind    place   grid h×w      N      M     C    H×d   scores
      2   down.0.0.attn2   cross   down       32×32   1024     77   320   8×40   (1, 8, 1024, 77)
    """

    def __init__(self, journey: Journey, layers: Sequence[LayerRecord] | None = None) -> None:
        self.journey = journey
        self.layers = list(journey.layers if layers is None else layers)

    def _table(self, rows: list[SummaryRow], columns: list[_Column], fold: bool) -> Table:
        table = Table(
            title="Attention layers", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD
        )
        for col in columns:
            folds = fold and col.header in ("layer", "scores")
            table.add_column(
                col.header,
                justify="right" if col.right else "left",
                no_wrap=not folds,
                overflow="fold" if folds else "ellipsis",
                min_width=16 if folds and col.header == "layer" else None,
            )
        for row in rows:
            table.add_row(*(col.cell(row) for col in columns))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = summary_rows(self.journey, self.layers)
        columns = list(_COLUMNS)
        if len({row.processor for row in rows}) > 1:
            columns.append(_PROCESSOR)
        if any(layer.checks for layer in self.layers):
            columns.append(_CHECK)
        fold = False
        while _needed(rows, columns) > options.max_width:
            droppable = [c for c in columns if c.drop]
            if not droppable:
                fold = True
                break
            columns.remove(max(droppable, key=lambda c: c.drop))
        yield self._table(rows, columns, fold=fold)
        for layer in self.layers:
            for check in layer.checks:
                if check.ok:
                    continue
                line = Text(f"{BAD_MARK} ", style="red")
                line.append(layer.name, style="bold")
                line.append(f": {check.name}")
                if check.detail:
                    line.append(f": {check.detail}")
                yield line
