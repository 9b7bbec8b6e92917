"""Golden journeys: regenerate, compare, and rewrite on purpose."""

from shapetrace.regression.cases import CASES, Case, contract
from shapetrace.regression.diff import Change, DiffTable, diff_contracts
from shapetrace.regression.runner import compare, main, write

__all__ = [
    "CASES",
    "Case",
    "Change",
    "DiffTable",
    "compare",
    "contract",
    "diff_contracts",
    "main",
    "write",
]
