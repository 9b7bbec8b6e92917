"""shapetrace: see and prove the tensor dimensions inside Stable Diffusion's attention.

>>> import shapetrace
>>> journey = shapetrace.trace_model("sd15", height=256, width=256)   # doctest: +SKIP
>>> journey.cross[0].shape("scores")                                  # doctest: +SKIP
(1, 8, 1024, 77)

The tracing entry points import torch on first use, so ``import shapetrace`` (and the CLI's
``--help``) stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shapetrace.errors import (
    CheckFailedError,
    InputShapeError,
    ModelLoadError,
    ModuleContractError,
    NoAttentionLayersError,
    OutputError,
    SettingError,
    ShapeTraceError,
)
from shapetrace.journey import Journey, LayerRecord, Stage

if TYPE_CHECKING:
    from shapetrace.run import trace_model
    from shapetrace.tracing import AttentionCall, trace

__version__ = "0.1.0"

__all__ = [
    "AttentionCall",
    "CheckFailedError",
    "InputShapeError",
    "Journey",
    "LayerRecord",
    "ModelLoadError",
    "ModuleContractError",
    "NoAttentionLayersError",
    "OutputError",
    "SettingError",
    "ShapeTraceError",
    "Stage",
    "trace",
    "trace_model",
]

_LAZY = {"trace", "trace_model", "AttentionCall"}


def __getattr__(name: str) -> Any:
    if name == "trace_model":
        from shapetrace.run import trace_model

        return trace_model
    if name in _LAZY:
        from shapetrace import tracing

        return getattr(tracing, name)
    raise AttributeError(f"module 'shapetrace' has no attribute {name!r}")
