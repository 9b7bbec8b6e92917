"""One root error for everything shapetrace refuses, each subclass saying when you see it."""

from __future__ import annotations

__all__ = [
    "CheckFailedError",
    "InputShapeError",
    "ModelLoadError",
    "ModuleContractError",
    "NoAttentionLayersError",
    "OutputError",
    "SettingError",
    "ShapeTraceError",
]


class ShapeTraceError(Exception):
    """Root of every error shapetrace raises on purpose.

    Messages name the layer (where there is one), the shapes involved and the fix.
    """


class InputShapeError(ShapeTraceError, ValueError):
    """Raised before a forward when the requested sizes or given tensors cannot work.

    For example a height not divisible by 8, a context whose width does not match the
    model's ``cross_attention_dim``, or a batch of 0.
    """


class NoAttentionLayersError(ShapeTraceError, LookupError):
    """Raised when a model holds no attention layer shapetrace can hook, or a forward ran
    without calling any of them. Silence here would mean an empty report."""



class ModelLoadError(ShapeTraceError, OSError):
    """Raised when a model name is unknown or a local weights folder is missing, partial or
    not in a safe format."""


class ModuleContractError(ShapeTraceError, TypeError):
    """Raised by ``shapetrace.testing``'s checks when the factory's module does not follow
    the contract (no ``to_q``/``to_k``/``to_v``/``to_out`` Linear, widths that do not match the
    arguments it was built with), so its invariants cannot be checked at all."""


class SettingError(ShapeTraceError, ValueError):
    """Raised before any work when a setting other than a size cannot work: a device or dtype
    shapetrace does not run on, a non-finite or negative guidance, more steps than the
    scheduler has, an empty prompt, or a run that needs more memory than the machine has.

    The message names the flag (or argument), the value and the fix.
    """


class OutputError(ShapeTraceError, OSError):
    """Raised before any work when an output cannot go where it was asked: a folder where a
    file is wanted (or the reverse), a missing or read-only folder, a name too long for the
    file system, two outputs on one path, or an output folder holding files that are not an
    earlier run's."""


class CheckFailedError(ShapeTraceError, RuntimeError):
    """Raised when a run finished but its results failed a check (for example maps that are
    not finite because the weights hold NaN); nothing is written. The CLI exits 1."""
