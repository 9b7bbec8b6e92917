"""Rich renderables for a :class:`~shapetrace.journey.Journey`.

Each is a small object with ``__rich_console__``; :class:`Report` stacks them. User-provided
text (layer and model names) always goes in as :class:`rich.text.Text`, never as markup.

>>> from rich import box
from rich.console import Console
>>> Console().print(Report(journey))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shapetrace.journey import Journey, LayerRecord
from shapetrace.report._console_summary import LayerSummary
from shapetrace.report._explain import legend, stage_rows
from shapetrace.report._format import DASH, fmt_grid, heads_text
from shapetrace.report._levels import levels, resolution_lines
from shapetrace.report._summary import header_facts

__all__ = [
    "JourneyHeader",
    "LayerSummary",
    "Report",
    "ResolutionExplainer",
    "StageJourney",
    "print_report",
]

OK_MARK = "✓"
#: Consoles at least this wide get the explanations inside the journey table; narrower ones
#: get them as lines under it.
WIDE = 150
#: Long op descriptions wrap at this width.
OP_WIDTH = 32
BAD_MARK = "✗"


class JourneyHeader:
    """Model, image size, batch, device, latent grid and the attention layer count."""

    def __init__(self, journey: Journey) -> None:
        self.journey = journey

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        for label, value in header_facts(self.journey):
            grid.add_row(label, Text(value))
        yield Panel(grid, title="shapetrace", title_align="left", expand=False)


class ResolutionExplainer:
    """How the image size becomes a grid and tokens at each level, and where seed 002 holds."""

    def __init__(self, journey: Journey) -> None:
        self.journey = journey

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        found = levels(self.journey)
        table = Table(
            title="Image size → tokens",
            title_justify="left",
            title_style="bold",
            box=box.SIMPLE_HEAD,
        )
        for header in ("level", "grid h×w", "tokens N", "channels", "H×d"):
            table.add_column(header, justify="right")
        table.add_column("cross layers")
        table.add_column("self layers")
        for lv in found:
            table.add_row(
                DASH if lv.index is None else str(lv.index),
                lv.grid_text,
                DASH if lv.tokens is None else str(lv.tokens),
                str(lv.channels),
                f"{lv.heads}×{lv.head_dim}",
                Text(lv.blocks_text("cross")),
                Text(lv.blocks_text("self")),
            )
        yield table
        for line in resolution_lines(self.journey, found):
            yield Text(line)


class StageJourney:
    """One layer's journey, stage by stage, titled with its full name.

    Derived stages (the scores and probabilities of fused SDPA, computed beside the layer) are
    marked ``derived`` in dim italics; the code's own layout, e.g. ``(B*H, N, d)``, is shown
    under the normalized shape when it differed.
    """

    def __init__(self, layer: LayerRecord) -> None:
        self.layer = layer

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
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
        rows = stage_rows(layer)
        inline = options.max_width >= WIDE
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("step", justify="right")
        table.add_column("stage", no_wrap=True)
        table.add_column("shape", no_wrap=True)
        table.add_column("layout", no_wrap=True)
        table.add_column("op", overflow="fold", max_width=OP_WIDTH)
        if inline:
            table.add_column("what happens", ratio=1)
        for row in rows:
            shape, layout, op = Text(row.shape), Text(row.layout), Text(row.op)
            if row.raw_shape:
                shape.append(f"\nraw {row.raw_shape}", style="dim")
            if row.raw_layout:
                layout.append(f"\n{row.raw_layout}", style="dim")
            if row.derived:
                said = "derived" in row.op
                op = Text(row.op if said else f"{row.op}\nderived", style="dim italic")
                shape.stylize("italic")
            cells: list[Text | str] = [str(row.step), row.name, shape, layout, op]
            if inline:
                cells.append(row.explanation)
            table.add_row(*cells)
        yield table
        if not inline:
            notes = Table.grid(padding=(0, 1))
            notes.add_column(justify="right")
            notes.add_column(no_wrap=True)
            notes.add_column()
            for row in rows:
                notes.add_row(str(row.step), row.name, row.explanation or DASH)
            yield notes
        yield Text(legend(layer), style="dim")


class Report:
    """The whole console report: header, layer table, resolution explainer and journeys.

    ``layers``: the layers whose journeys to show (default: the first cross-attention layer);
    ``summary``: the layers in the table (default: all).
    """

    def __init__(
        self,
        journey: Journey,
        layers: Sequence[LayerRecord] | None = None,
        *,
        summary: Sequence[LayerRecord] | None = None,
    ) -> None:
        self.journey = journey
        default = journey.cross[:1] or journey.layers[:1]
        self.layers = list(default if layers is None else layers)
        self.summary = summary

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield JourneyHeader(self.journey)
        yield LayerSummary(self.journey, self.summary)
        yield Text()
        yield ResolutionExplainer(self.journey)
        for layer in self.layers:
            yield Text()
            yield StageJourney(layer)


def print_report(
    journey: Journey,
    layers: Sequence[LayerRecord] | None = None,
    *,
    summary: Sequence[LayerRecord] | None = None,
    console: Console | None = None,
) -> None:
    """Print :class:`Report` for ``journey`` to ``console`` (default: a new stdout console)."""
    (console or Console()).print(Group(Report(journey, layers, summary=summary)))
