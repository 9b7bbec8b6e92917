"""Rich renderables for a :class:`~shapetrace.journey.Journey`.

Each is a small object with ``__rich_console__``; :class:`Report` stacks them. User-provided
text (layer and model names) always goes in as :class:`rich.text.Text`, never as markup.

>>> from rich.console import Console
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
from shapetrace.report._console_journey import StageJourney
from shapetrace.report._console_summary import LayerSummary
from shapetrace.report._format import DASH
from shapetrace.report._levels import block_columns, levels, resolution_lines
from shapetrace.report._summary import header_facts

__all__ = [
    "JourneyHeader",
    "LayerSummary",
    "NotUnderstoodTable",
    "Report",
    "ResolutionExplainer",
    "StageJourney",
    "print_report",
]


class JourneyHeader:
    """Model, image size, batch, device, latent grid and the attention layer count.

    >>> Console().print(JourneyHeader(journey))  # doctest: +SKIP
    ╭─ shapetrace ─────────────────────────────────────╮
    │ image H×W  512×512                                │
    │ latent     64×64 (image ÷ 8)                      │
    │ attention  32 attention layers: 16 self, 16 cross │
    """

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
    """How the image size becomes a grid and tokens at each level, and where the common
    tutorial table holds.

    >>> Console().print(ResolutionExplainer(journey_512))  # doctest: +SKIP
      level   grid h×w   tokens N   channels     H×d   layers (cross and self)
          0      64×64       4096        320    8×40   down_blocks.0 (2), up_blocks.3 (3)
    ...
    The common tutorial table, (1, 320, 32, 32) → (1, 1024, 320), holds at 256×256; at 512×512
    the 320-channel level has 64×64 = 4096 tokens (8 heads of 40), ...
    """

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
        blocks = block_columns(found)
        for header, _ in blocks:
            table.add_column(header)
        for lv in found:
            table.add_row(
                DASH if lv.index is None else str(lv.index),
                lv.grid_text,
                DASH if lv.tokens is None else str(lv.tokens),
                str(lv.channels),
                f"{lv.heads}×{lv.head_dim}",
                *(Text(lv.blocks_text(kind)) for _, kind in blocks),
            )
        yield table
        for line in resolution_lines(self.journey, found):
            yield Text(line)


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
        if self.journey.not_understood:
            yield Text()
            yield NotUnderstoodTable(self.journey)
        yield Text()
        yield ResolutionExplainer(self.journey)
        for layer in self.layers:
            yield Text()
            yield StageJourney(layer)


class NotUnderstoodTable:
    """The layers that ran but could not be read as attention, with the reason for each:
    listed, never given a guessed label."""

    def __init__(self, journey: Journey) -> None:
        self.journey = journey

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = Table(title="Not understood", title_justify="left", title_style="bold yellow",
                      box=box.SIMPLE_HEAD)
        for header in ("layer", "type", "why"):
            table.add_column(header, overflow="fold")
        for entry in self.journey.not_understood:
            table.add_row(Text(entry.name), Text(entry.module_type), Text(entry.reason))
        yield table


def print_report(
    journey: Journey,
    layers: Sequence[LayerRecord] | None = None,
    *,
    summary: Sequence[LayerRecord] | None = None,
    console: Console | None = None,
) -> None:
    """Print :class:`Report` for ``journey`` to ``console`` (default: a new stdout console).

    >>> journey = shapetrace.trace_model("sd15", height=256, width=256)  # doctest: +SKIP
    >>> print_report(journey, journey.select(contains="mid_block"))    # doctest: +SKIP
    Journey: mid_block.attentions.0.transformer_blocks.0.attn1
    ...
         10   scores        (1, 8, 16, 16)     (B, H, N, M)   ...
    """
    (console or Console()).print(Group(Report(journey, layers, summary=summary)))
