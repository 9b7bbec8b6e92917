"""Tracing: the dimension journey of every attention call of a model."""

from shapetrace.tracing._discover import LayerInfo, find_attention_layers
from shapetrace.tracing._probe import AttentionCall, Probe
from shapetrace.tracing.tracer import Tracer, trace

__all__ = ["AttentionCall", "LayerInfo", "Probe", "Tracer", "find_attention_layers", "trace"]
