"""The tutorials' (seeds 000 and 001) attention modules, written so they run, on CPU, CUDA and
``meta``: what shapetrace traces first and checks every implementation against."""

from shapetrace.reference.attention import (
    CrossAttention,
    SpatialCrossAttention,
    SpatialCrossAttentionParams,
    cross_attention,
)
from shapetrace.reference.blocks import CrossAttnResBlock, ResBlock, timestep_embedding
from shapetrace.reference.model import ReferenceModel
from shapetrace.reference.text import SimplifiedCLIPTextEncoder

__all__ = [
    "CrossAttention",
    "CrossAttnResBlock",
    "ReferenceModel",
    "ResBlock",
    "SimplifiedCLIPTextEncoder",
    "SpatialCrossAttention",
    "SpatialCrossAttentionParams",
    "cross_attention",
    "timestep_embedding",
]
