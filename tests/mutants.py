"""What the checks are measured on: planted bugs and correct variants, modules and processors.

Each planted bug has a *kind* (what sort of mistake), the invariant(s) whose violation is its
honest diagnosis, and a *witness*: where it shows, so that test_mutants can prove it wrong by
a direct float64 comparison with diffusers' reference processor before it counts. The correct
variants compute the same function by other routes; several are built to bait false alarms.
The classes live in planted_modules.py, correct_modules.py and planted_processors.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from correct_modules import (
    BranchesOnShape,
    CheckpointedWhenTraining,
    EinopsRearrange,
    Float64Inside,
    FoldedHeadsBatchMajor,
    HandWrittenSoftmax,
    KeyChunkedOnlineSoftmax,
    PaddedToEight,
    QueryChunked,
    SequenceFirst,
    SoftmaxUpcast,
    ToOutPerBatchRow,
    ToOutPerQueryChunk,
)
from diffusers.models.attention_processor import (
    AttnAddedKVProcessor2_0,
    AttnProcessor2_0,
    SlicedAttnProcessor,
)
from planted_modules import (
    AlignedFastPathMixesHeads,
    AlignedHeadDimFusedScale,
    BatchAndHeadsMixed,
    CausalMaskInCrossAttention,
    ClampedScores,
    ContextIgnored,
    ContextTokenDropped,
    ContextTruncatedTo77,
    ContextViewedAs77,
    DetachedKeys,
    GlobalMaxSubtraction,
    HandWrittenSoftmaxBackward,
    KeyChunkedSoftmaxWithoutRescale,
    KeysAndValuesSwapped,
    LongSequenceChunksForgetScale,
    MergeWithoutTranspose,
    NaiveLogSumExp,
    NoScale,
    OneHeadOnly,
    PaddedToEightSlicedFromTheEnd,
    Plain,
    QueryBiasDropped,
    QueryChunksReversed,
    ResidualInsideAttention,
    ScaleByHeadDim,
    ScaleByInnerWidth,
    SoftmaxOverHeads,
    SoftmaxOverQueries,
    SoftmaxWithoutMaxSubtraction,
    SplitWithViewNoTranspose,
    TrainingPathUnscaled,
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
from torch import nn

from shapetrace.reference import CrossAttention
from shapetrace.testing import ADDED_KV_NAMES, AttentionShapes
from shapetrace.testing.implementations import EinopsCrossAttention, SDPACrossAttention

__all__ = [
    "CORRECT",
    "MUTANTS",
    "PROCESSOR_CORRECT",
    "PROCESSOR_MUTANTS",
    "SHIPPED",
    "MaskIgnoringProcessor",
    "ModuleWitness",
    "NoScale",
    "Plain",
    "Planted",
    "ProcessorWitness",
    "SoftmaxOverQueries",
    "UnscaledProcessor",
]


@dataclass(frozen=True)
class ModuleWitness:
    """Where a module's bug shows: ``shapes``; to_q and to_k scaled by ``logit_factor``
    (every score times its square); ``gradients`` when it shows only in the backward or
    with autograd on."""

    shapes: AttentionShapes = AttentionShapes(2, 4, 4, 9, 7, 16, 12, seed=1)
    logit_factor: float = 1.0
    gradients: bool = False


@dataclass(frozen=True)
class ProcessorWitness:
    """Where a processor's bug shows: ``Attention(query_dim, heads=2, dim_head=4, **kwargs)``
    on a (B=2, query_dim, *grid) map (or (2, N, query_dim) tokens when ``grid`` is None),
    with ``context`` tokens (None: self-attention), an additive key mask, a ``temb`` map."""

    kwargs: dict[str, Any] = field(default_factory=lambda: {"cross_attention_dim": 12})
    query_dim: int = 16
    grid: tuple[int, int] | None = None
    tokens: int = 9
    context: int | None = 7
    mask: bool = False
    temb: bool = False
    logit_factor: float = 1.0
    gradients: bool = False
    added_kv: bool = False


@dataclass(frozen=True)
class Planted:
    """A planted bug: its ``kind``, the invariants that honestly name it, its witness and, for
    a processor, the configurations to check it on."""

    kind: str
    expected: tuple[str, ...]
    witness: Any = field(default_factory=ModuleWitness)
    configurations: tuple[str, ...] | None = None  # processors: None, the default ones


SHAPES_VARY = "shows only at some shapes"
AUTOGRAD = "shows only with autograd on"
LARGE = "shows only at large logits"

_M78 = ModuleWitness(AttentionShapes(1, 2, 4, 5, 78, 8, 6, seed=1))
_ALIGNED = ModuleWitness(AttentionShapes(2, 4, 8, 64, 77, 32, 12, seed=1))
_LONG = ModuleWitness(AttentionShapes(1, 1, 4, 1025, 7, 4, 6, seed=1))
_GRAD = ModuleWitness(gradients=True)
_LARGE = ModuleWitness(logit_factor=6.0)
_HUGE = ModuleWitness(logit_factor=16.0)  # float64 overflows only past ~709

MUTANTS: dict[Callable[..., nn.Module], Planted] = {
    SoftmaxOverQueries: Planted("softmax axis", ("softmax_normalization",)),
    SoftmaxOverHeads: Planted("softmax axis", ("softmax_normalization",)),
    NoScale: Planted("scale", ("scale",)),
    ScaleByInnerWidth: Planted("scale", ("scale",)),
    ScaleByHeadDim: Planted("scale", ("scale",)),
    SplitWithViewNoTranspose: Planted("heads", ("head_independence",)),
    MergeWithoutTranspose: Planted(
        "heads", ("head_independence", "query_permutation_equivariance")
    ),
    OneHeadOnly: Planted("heads", ("head_independence",)),
    KeysAndValuesSwapped: Planted("tokens", ("convex_combination",)),
    ContextIgnored: Planted("tokens", ("convex_combination", "uniform_scores")),
    ContextTokenDropped: Planted(
        "tokens", ("softmax_normalization", "key_permutation_invariance", "uniform_scores")
    ),
    CausalMaskInCrossAttention: Planted(
        "tokens", ("query_permutation_equivariance", "key_permutation_invariance")
    ),
    QueryChunksReversed: Planted("tokens", ("query_permutation_equivariance",)),
    BatchAndHeadsMixed: Planted("batch", ("batch_independence",)),
    QueryBiasDropped: Planted("weights", ("reference_agreement",)),
    ResidualInsideAttention: Planted("weights", ("convex_combination", "reference_agreement")),
    SoftmaxWithoutMaxSubtraction: Planted("numerics", ("finite_large_inputs",), _HUGE),
    ContextTruncatedTo77: Planted(
        SHAPES_VARY, ("key_permutation_invariance", "uniform_scores", "reference_agreement"), _M78
    ),
    ContextViewedAs77: Planted(SHAPES_VARY, ("output_shape",)),
    AlignedFastPathMixesHeads: Planted(
        SHAPES_VARY, ("head_independence", "query_permutation_equivariance"), _ALIGNED
    ),
    AlignedHeadDimFusedScale: Planted(SHAPES_VARY, ("scale",), _ALIGNED),
    LongSequenceChunksForgetScale: Planted(SHAPES_VARY, ("scale", "reference_agreement"), _LONG),
    PaddedToEightSlicedFromTheEnd: Planted(SHAPES_VARY, ("query_permutation_equivariance",)),
    KeyChunkedSoftmaxWithoutRescale: Planted(
        SHAPES_VARY, ("key_permutation_invariance", "reference_agreement"), _M78
    ),
    TrainingPathUnscaled: Planted(AUTOGRAD, ("gradient_agreement",), _GRAD),
    DetachedKeys: Planted(AUTOGRAD, ("gradient_agreement",), _GRAD),
    HandWrittenSoftmaxBackward: Planted(AUTOGRAD, ("gradient_agreement",), _GRAD),
    ClampedScores: Planted(LARGE, ("large_logit_agreement",), _LARGE),
    NaiveLogSumExp: Planted(LARGE, ("large_logit_agreement", "finite_large_inputs"), _HUGE),
    GlobalMaxSubtraction: Planted(LARGE, ("finite_large_inputs",), _HUGE),
}
"""Each planted module bug, its kind, honest diagnosis and witness."""


def _sdpa(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return SDPACrossAttention(query_dim, context_dim, num_heads=heads)


def _einops(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return EinopsCrossAttention(query_dim, context_dim, num_heads=heads)


CORRECT: dict[str, Callable[..., nn.Module]] = {
    "plain": Plain,
    "einops_rearrange": EinopsRearrange,
    "einops_module": _einops,
    "sdpa": _sdpa,
    "query_chunked": QueryChunked,
    "float64_inside": Float64Inside,
    "softmax_upcast": SoftmaxUpcast,
    "to_out_per_query_chunk": ToOutPerQueryChunk,
    "to_out_per_batch_row": ToOutPerBatchRow,
    "sequence_first": SequenceFirst,
    "key_chunked_online_softmax": KeyChunkedOnlineSoftmax,
    "padded_to_eight": PaddedToEight,
    "branches_on_shape": BranchesOnShape,
    "checkpointed_when_training": CheckpointedWhenTraining,
    "hand_written_softmax_backward": HandWrittenSoftmax,
    "folded_heads_batch_major": FoldedHeadsBatchMajor,
}
"""Variants that compute exactly cross-attention, by other routes."""

_VAE = {"norm_num_groups": 4, "residual_connection": True, "rescale_output_factor": 2.0**0.5}
_ADDED = {"cross_attention_dim": 16, "added_kv_proj_dim": 12, "norm_num_groups": 4}

PROCESSOR_MUTANTS: dict[Callable[[], Any], Planted] = {
    UnscaledProcessor: Planted("scale", ("scale",), ProcessorWitness()),
    MaskIgnoringProcessor: Planted("masks", ("masking",), ProcessorWitness(mask=True)),
    MaskRepeatedHeadMajor: Planted(
        "masks", ("key_permutation_invariance", "masking"), ProcessorWitness(mask=True)
    ),
    SelfKeysBeforeGroupNorm: Planted(
        "self-attention path",
        ("reference_agreement",),
        ProcessorWitness(_VAE, grid=(3, 4), context=None),
    ),
    ContextRequired: Planted(
        "self-attention path", ("output_shape",), ProcessorWitness({}, context=None)
    ),
    MapFlattenedWithoutTranspose: Planted(
        "(B, C, H, W) input", ("reference_agreement",), ProcessorWitness(grid=(3, 4))
    ),
    GroupNormSkipped: Planted(
        "group norm", ("reference_agreement",), ProcessorWitness(_VAE, grid=(3, 4), context=None)
    ),
    SpatialNormIgnored: Planted(
        "spatial norm",
        ("reference_agreement",),
        ProcessorWitness(
            {"spatial_norm_dim": 4}, query_dim=32, grid=(3, 4), context=None, temb=True
        ),
    ),
    NormCrossSkipped: Planted(
        "norm_cross",
        ("reference_agreement",),
        ProcessorWitness({"cross_attention_dim": 12, "cross_attention_norm": "layer_norm"}),
    ),
    RescaleBeforeResidual: Planted(
        "residual and rescale",
        ("reference_agreement",),
        ProcessorWitness(
            {"cross_attention_dim": 12, "residual_connection": True, "rescale_output_factor": 2.0}
        ),
    ),
    AddedKVImageKeysDropped: Planted(
        "added KV",
        ("key_permutation_invariance", "reference_agreement"),
        ProcessorWitness(_ADDED, grid=(3, 4), added_kv=True),
        ADDED_KV_NAMES,
    ),
    AddedKVResidualDropped: Planted(
        "added KV",
        ("reference_agreement",),
        ProcessorWitness(_ADDED, grid=(3, 4), added_kv=True),
        ADDED_KV_NAMES,
    ),
    TrainingPathDropsMask: Planted(
        AUTOGRAD, ("gradient_agreement",), ProcessorWitness(mask=True, gradients=True)
    ),
    ValuesDetached: Planted(AUTOGRAD, ("gradient_agreement",), ProcessorWitness(gradients=True)),
    ClampedScoresProcessor: Planted(
        LARGE, ("large_logit_agreement",), ProcessorWitness(logit_factor=6.0)
    ),
}
"""Planted bugs in diffusers attention processors, for ``check_attn_processor``."""

PROCESSOR_CORRECT: dict[str, tuple[Callable[[], Any], tuple[str, ...] | None]] = {
    "AttnProcessor2_0": (AttnProcessor2_0, None),
    "hand_written": (HandProcessor, None),
    "AttnAddedKVProcessor2_0": (AttnAddedKVProcessor2_0, None),
    "hand_written_added_kv": (HandAddedKVProcessor, ADDED_KV_NAMES),
    "SlicedAttnProcessor_without_spatial_norm": (
        lambda: SlicedAttnProcessor(3),
        (
            "cross",
            "self",
            "cross_spatial",
            "self_spatial_group_norm",
            "norm_cross_group",
            "residual_rescale",
        ),
    ),
}
"""Correct processors and the configurations to check them on (None: the default ones).
diffusers' SlicedAttnProcessor takes no ``temb`` and ignores the spatial norm (a real gap,
shown in test_mutants), so it is checked without that configuration. AttnProcessor and
AttnAddedKVProcessor are the oracles themselves."""


# -- the modules shapetrace ships, as check_attention_module factories -----------------------
def seed_reference(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return CrossAttention(query_dim, context_dim, num_heads=heads)


def einops_module(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return EinopsCrossAttention(query_dim, context_dim, num_heads=heads)


def sdpa_module(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return SDPACrossAttention(query_dim, context_dim, num_heads=heads)


SHIPPED = {"seed_reference": seed_reference, "einops": einops_module, "sdpa": sdpa_module}
