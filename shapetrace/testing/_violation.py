"""What the checks raise: :class:`InvariantViolation` (an ``AssertionError`` that leads with
the invariant's name) when the code is wrong, and before anything runs a
:class:`CheckArgumentError` or :class:`ModuleContractError` when it cannot be checked."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from shapetrace.errors import ModuleContractError, ShapeTraceError

if TYPE_CHECKING:
    from shapetrace.testing.strategies import AttentionShapes

__all__ = ["CheckArgumentError", "InvariantViolation", "ModuleContractError", "OracleError"]


class CheckArgumentError(ShapeTraceError, ValueError):
    """Raised up front when an argument of a check cannot work: an empty or unknown invariant
    list, a dtype with no tolerance, a device with no values (``meta``) or none here, an
    unknown processor configuration. The message names the argument, its value and the fix."""


class OracleError(ShapeTraceError, RuntimeError):
    """Raised when the oracle itself (diffusers' reference processor in float64) fails on a
    layer configuration: a limit of the check, never blamed on the code under test."""


class InvariantViolation(AssertionError):
    """An attention invariant does not hold: ``invariant`` names it, ``detail`` says by how
    much, ``shapes`` and ``example`` give the (shrunk) falsifying example.

    Its message starts with ``"<invariant>: "``, so ``pytest.raises(AssertionError,
    match="^scale: ")`` pins which invariant failed.
    """

    def __init__(
        self,
        invariant: str,
        detail: str,
        *,
        shapes: AttentionShapes | None = None,
        statement: str = "",
        subject: str = "",
        example: str = "",
    ) -> None:
        self.invariant = invariant
        self.detail = detail
        self.shapes = shapes
        self.statement = statement
        self.subject = subject
        self.example = example
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [f"{self.invariant}: {self.detail}"]
        if self.statement:
            lines.append(f"  invariant: {self.statement}")
        if self.subject:
            lines.append(f"  checked: {self.subject}")
        if self.shapes is not None:
            lines.append(f"  shapes: {self.shapes.describe()}")
        if self.example:
            example = self.example.replace("\n", "\n    ")
            lines.append(f"  falsifying example: {example}")
        return "\n".join(lines)

    def completed(self, *, statement: str, subject: str, example: str) -> InvariantViolation:
        """A copy with the invariant's statement, what was checked and Hypothesis' example."""
        done = InvariantViolation(
            self.invariant,
            self.detail,
            shapes=None if self.shapes is None else replace(self.shapes),
            statement=statement,
            subject=subject,
            example=example,
        )
        return done
