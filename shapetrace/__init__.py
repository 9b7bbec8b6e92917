"""shapetrace: see and prove the tensor dimensions inside Stable Diffusion's attention."""

from shapetrace.errors import (
    InputShapeError,
    ModelLoadError,
    NoAttentionLayersError,
    ShapeTraceError,
    TraceError,
)
from shapetrace.journey import Journey, LayerRecord, Stage
from shapetrace.trace import AttentionCall, trace
from shapetrace.trace.run import trace_model

__version__ = "0.1.0"

__all__ = [
    "AttentionCall",
    "InputShapeError",
    "Journey",
    "LayerRecord",
    "ModelLoadError",
    "NoAttentionLayersError",
    "ShapeTraceError",
    "Stage",
    "TraceError",
    "trace",
    "trace_model",
]
