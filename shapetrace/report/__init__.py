"""Reports of a traced :class:`~shapetrace.journey.Journey`: rich console, Markdown.

>>> from shapetrace.report import print_report, to_markdown
>>> print_report(journey)                 # doctest: +SKIP
>>> text = to_markdown(journey)           # doctest: +SKIP
"""

from shapetrace.report._format import fmt_shape, short_name, symbolic
from shapetrace.report._select import choose_layers, match_layers
from shapetrace.report.console import (
    JourneyHeader,
    LayerSummary,
    Report,
    ResolutionExplainer,
    StageJourney,
    print_report,
)
from shapetrace.report.markdown import escape, to_markdown

__all__ = [
    "JourneyHeader",
    "LayerSummary",
    "Report",
    "ResolutionExplainer",
    "StageJourney",
    "choose_layers",
    "escape",
    "fmt_shape",
    "match_layers",
    "print_report",
    "short_name",
    "symbolic",
    "to_markdown",
]
