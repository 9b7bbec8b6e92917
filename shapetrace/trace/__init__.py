"""Tracing: the dimension journey of every attention call of a model."""

from shapetrace.trace._call import AttentionCall, Probe
from shapetrace.trace._discover import LayerInfo, find_attention_layers
from shapetrace.trace.run import trace_model
from shapetrace.trace.tracer import Tracer, trace

__all__ = [
    "AttentionCall",
    "LayerInfo",
    "Probe",
    "Tracer",
    "find_attention_layers",
    "trace",
    "trace_model",
]
