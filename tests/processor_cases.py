"""Planted bugs and correct processors for ``check_attn_processor``, with their witnesses:
where each bug shows, where it hides, and one witness per ``Attention`` configuration where
the correct processors are shown right in float64."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cases import AUTOGRAD, LARGE, Planted, ProcessorWitness
from diffusers.models.attention_processor import (
    AttnAddedKVProcessor2_0,
    AttnProcessor2_0,
    SlicedAttnProcessor,
)
from planted_processors import (
    AddedKVImageKeysDropped,
    AddedKVResidualDropped,
    ClampedScoresProcessor,
    ContextRequired,
    GroupNormSkipped,
    HandAddedKVProcessor,
    HandProcessor,
    MapFlattenedWithoutTranspose,
    MaskIgnoringProcessor,
    MaskRepeatedHeadMajor,
    NormCrossSkipped,
    RescaleBeforeResidual,
    SelfKeysBeforeGroupNorm,
    SpatialNormIgnored,
    TrainingPathDropsMask,
    UnscaledProcessor,
    ValuesDetached,
)

from shapetrace.testing import ADDED_KV_NAMES, STANDARD_NAMES

__all__ = ["PROCESSOR_CORRECT", "PROCESSOR_MUTANTS", "PROCESSOR_WITNESSES", "CorrectProcessor"]

_VAE = {"norm_num_groups": 4, "residual_connection": True, "rescale_output_factor": 2.0**0.5}
_ADDED = {"cross_attention_dim": 16, "added_kv_proj_dim": 12, "norm_num_groups": 4}

_CROSS = ProcessorWitness()  # plain cross-attention on tokens, no mask, no grad, scale 1
_MASKED = ProcessorWitness(mask=True)

PROCESSOR_MUTANTS: dict[Callable[[], Any], Planted] = {
    UnscaledProcessor: Planted("scale", ("scale",), _CROSS),
    MaskIgnoringProcessor: Planted("masks", ("masking",), _MASKED, hides=_CROSS),
    MaskRepeatedHeadMajor: Planted(
        "masks", ("key_permutation_invariance", "masking"), _MASKED, hides=_CROSS
    ),
    SelfKeysBeforeGroupNorm: Planted(
        "self-attention path",
        ("reference_agreement",),
        ProcessorWitness(_VAE, grid=(3, 4), context=None),
        hides=_CROSS,
    ),
    ContextRequired: Planted(
        "self-attention path", ("output_shape",), ProcessorWitness({}, context=None), hides=_CROSS
    ),
    MapFlattenedWithoutTranspose: Planted(
        "(B, C, H, W) input", ("reference_agreement",), ProcessorWitness(grid=(3, 4)), hides=_CROSS
    ),
    GroupNormSkipped: Planted(
        "group norm",
        ("reference_agreement",),
        ProcessorWitness(_VAE, grid=(3, 4), context=None),
        hides=_CROSS,
    ),
    SpatialNormIgnored: Planted(
        "spatial norm",
        ("reference_agreement",),
        ProcessorWitness(
            {"spatial_norm_dim": 4}, query_dim=32, grid=(3, 4), context=None, temb=True
        ),
        hides=_CROSS,
    ),
    NormCrossSkipped: Planted(
        "norm_cross",
        ("reference_agreement",),
        ProcessorWitness({"cross_attention_dim": 12, "cross_attention_norm": "layer_norm"}),
        hides=_CROSS,
    ),
    RescaleBeforeResidual: Planted(
        "residual and rescale",
        ("reference_agreement",),
        ProcessorWitness(
            {"cross_attention_dim": 12, "residual_connection": True, "rescale_output_factor": 2.0}
        ),
        hides=_CROSS,
    ),
    AddedKVImageKeysDropped: Planted(
        "added KV",
        ("key_permutation_invariance", "reference_agreement"),
        ProcessorWitness(_ADDED, grid=(3, 4), added_kv=True),
        ADDED_KV_NAMES,
        hides=ProcessorWitness(
            {**_ADDED, "only_cross_attention": True}, grid=(3, 4), added_kv=True
        ),
    ),
    AddedKVResidualDropped: Planted(
        "added KV",
        ("reference_agreement",),
        ProcessorWitness(_ADDED, grid=(3, 4), added_kv=True),
        ADDED_KV_NAMES,
    ),
    TrainingPathDropsMask: Planted(
        AUTOGRAD,
        ("gradient_agreement",),
        ProcessorWitness(mask=True, gradients=True),
        hides=_MASKED,
    ),
    ValuesDetached: Planted(
        AUTOGRAD, ("gradient_agreement",), ProcessorWitness(gradients=True), hides=_CROSS
    ),
    ClampedScoresProcessor: Planted(
        LARGE, ("large_logit_agreement",), ProcessorWitness(logit_factor=12.0), hides=_CROSS
    ),
}
"""Planted bugs in diffusers attention processors, for ``check_attn_processor``."""


@dataclass(frozen=True)
class CorrectProcessor:
    """A correct processor: its factory, the configurations to check it on (None: the
    default ones), those it is shown right on in float64, and its head width (8 makes
    ``heads * dim_head == query_dim`` in the witnesses; drawn shapes are then tied too)."""

    factory: Callable[[], Any]
    configurations: tuple[str, ...] | None
    proven_on: tuple[str, ...]
    dim_head: int = 4
    half_fails_upcast: bool = False  # diffusers' get_attention_scores: upcast + mask in half


_NO_SPATIAL_NORM = tuple(n for n in STANDARD_NAMES if n != "spatial_norm")
_EXACT = tuple(n for n in _NO_SPATIAL_NORM if n != "upcast")  # its upcast casts float64 down

PROCESSOR_CORRECT: dict[str, CorrectProcessor] = {
    "AttnProcessor2_0": CorrectProcessor(AttnProcessor2_0, None, STANDARD_NAMES),
    "hand_written": CorrectProcessor(HandProcessor, None, STANDARD_NAMES),
    "SlicedAttnProcessor_without_spatial_norm": CorrectProcessor(
        lambda: SlicedAttnProcessor(3), _NO_SPATIAL_NORM, _EXACT, half_fails_upcast=True
    ),
    "AttnAddedKVProcessor2_0_tied_width": CorrectProcessor(
        AttnAddedKVProcessor2_0, None, ADDED_KV_NAMES, dim_head=8
    ),
    "hand_written_added_kv": CorrectProcessor(HandAddedKVProcessor, ADDED_KV_NAMES, ADDED_KV_NAMES),
}
"""Correct processors (diffusers' AttnProcessor and AttnAddedKVProcessor are the oracles).
diffusers' SlicedAttnProcessor takes no ``temb`` and ignores the spatial norm, and its
AttnAddedKVProcessor2_0 reshapes by ``query_dim`` where it means ``heads * dim_head``: real
gaps, shown in test_mutants, so each is checked where it holds."""

PROCESSOR_WITNESSES: dict[str, ProcessorWitness] = {
    "cross": ProcessorWitness(mask=True, gradients=True),
    "self": ProcessorWitness({}, context=None, mask=True, gradients=True),
    "cross_spatial": ProcessorWitness(grid=(3, 4), mask=True),
    "self_spatial_group_norm": ProcessorWitness(_VAE, grid=(3, 4), context=None, gradients=True),
    "spatial_norm": ProcessorWitness(
        {"spatial_norm_dim": 4}, query_dim=32, grid=(3, 4), context=None, temb=True
    ),
    "norm_cross_layer": ProcessorWitness(
        {"cross_attention_dim": 12, "cross_attention_norm": "layer_norm"}, mask=True
    ),
    "norm_cross_group": ProcessorWitness(
        {
            "cross_attention_dim": 12,
            "cross_attention_norm": "group_norm",
            "cross_attention_norm_num_groups": 4,
        }
    ),
    "residual_rescale": ProcessorWitness(
        {"cross_attention_dim": 12, "residual_connection": True, "rescale_output_factor": 2.0},
        logit_factor=6.0,
    ),
    "upcast": ProcessorWitness(
        {"cross_attention_dim": 12, "upcast_attention": True, "upcast_softmax": True},
        oracle_without=("upcast_attention", "upcast_softmax"),  # float64 is already exact
    ),
    "added_kv": ProcessorWitness(_ADDED, grid=(3, 4), added_kv=True, gradients=True),
    "added_kv_only_cross": ProcessorWitness(
        {**_ADDED, "only_cross_attention": True}, grid=(3, 4), added_kv=True
    ),
    "added_kv_norm_cross": ProcessorWitness(
        {**_ADDED, "cross_attention_norm": "group_norm", "cross_attention_norm_num_groups": 4},
        grid=(3, 4),
        added_kv=True,
    ),
}
"""One witness per configuration, where correct processors are shown right in float64."""
