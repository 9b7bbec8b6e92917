"""What the checks are measured on: planted bugs and correct variants, modules and processors.

Each planted bug has a *kind* (what sort of mistake), the invariant(s) whose violation is its
honest diagnosis, and a *witness*: where it shows, so that test_mutants can prove it wrong by
a direct float64 comparison with diffusers' reference processor before it counts. The correct
variants compute the same function by other routes; several are built to bait false alarms.
The classes live in planted_modules.py, correct_modules.py and planted_processors.py; the
records in cases.py; the processors' registry in processor_cases.py (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable

from cases import (
    AUTOGRAD,
    GENERIC,
    LARGE,
    SHAPES_VARY,
    ModuleWitness,
    Planted,
    ProcessorWitness,
)
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
    ToOutOnPaddedQueries,
    ToOutPerBatchRow,
    ToOutPerQueryChunk,
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
    MaskIgnoringProcessor,
    UnscaledProcessor,
)
from processor_cases import (
    PROCESSOR_CORRECT,
    PROCESSOR_MUTANTS,
    PROCESSOR_WITNESSES,
    CorrectProcessor,
)
from torch import nn

from shapetrace.reference import CrossAttention
from shapetrace.testing import AttentionShapes
from shapetrace.testing.implementations import EinopsCrossAttention, SDPACrossAttention

__all__ = [
    "CORRECT",
    "GENERIC",
    "MUTANTS",
    "PROCESSOR_CORRECT",
    "PROCESSOR_MUTANTS",
    "PROCESSOR_WITNESSES",
    "SHIPPED",
    "CorrectProcessor",
    "MaskIgnoringProcessor",
    "ModuleWitness",
    "NoScale",
    "Plain",
    "Planted",
    "ProcessorWitness",
    "SoftmaxOverQueries",
    "UnscaledProcessor",
]


_M78 = ModuleWitness(AttentionShapes(1, 2, 4, 5, 78, 8, 6, seed=1))
_ALIGNED = ModuleWitness(AttentionShapes(2, 4, 8, 64, 77, 32, 12, seed=1))
_LONG = ModuleWitness(AttentionShapes(1, 1, 4, 1025, 7, 4, 6, seed=1))
_GRAD = ModuleWitness(gradients=True)
_LARGE = ModuleWitness(logit_factor=12.0)
_N8 = ModuleWitness(AttentionShapes(2, 4, 4, 8, 7, 16, 12, seed=1))
_M77 = ModuleWitness(AttentionShapes(2, 4, 4, 9, 77, 16, 12, seed=1))
_PLAIN = ModuleWitness()
_HUGE = ModuleWitness(logit_factor=40.0)  # float64 overflows only past ~709

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
        SHAPES_VARY,
        ("key_permutation_invariance", "uniform_scores", "reference_agreement"),
        _M78,
        hides=_PLAIN,
    ),
    ContextViewedAs77: Planted(SHAPES_VARY, ("output_shape",), hides=_M77),
    AlignedFastPathMixesHeads: Planted(
        SHAPES_VARY, ("head_independence", "query_permutation_equivariance"), _ALIGNED, hides=_PLAIN
    ),
    AlignedHeadDimFusedScale: Planted(SHAPES_VARY, ("scale",), _ALIGNED, hides=_PLAIN),
    LongSequenceChunksForgetScale: Planted(
        SHAPES_VARY, ("scale", "reference_agreement"), _LONG, hides=_PLAIN
    ),
    PaddedToEightSlicedFromTheEnd: Planted(
        SHAPES_VARY, ("query_permutation_equivariance",), hides=_N8
    ),
    KeyChunkedSoftmaxWithoutRescale: Planted(
        SHAPES_VARY, ("key_permutation_invariance", "reference_agreement"), _M78, hides=_PLAIN
    ),
    TrainingPathUnscaled: Planted(AUTOGRAD, ("gradient_agreement",), _GRAD, hides=_PLAIN),
    DetachedKeys: Planted(AUTOGRAD, ("gradient_agreement",), _GRAD, hides=_PLAIN),
    HandWrittenSoftmaxBackward: Planted(AUTOGRAD, ("gradient_agreement",), _GRAD, hides=_PLAIN),
    ClampedScores: Planted(LARGE, ("large_logit_agreement",), _LARGE, hides=_PLAIN),
    NaiveLogSumExp: Planted(
        LARGE, ("large_logit_agreement", "finite_large_inputs"), _HUGE, hides=_PLAIN
    ),
    GlobalMaxSubtraction: Planted(LARGE, ("finite_large_inputs",), _HUGE, hides=_PLAIN),
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
    "to_out_on_padded_queries": ToOutOnPaddedQueries,
    "branches_on_shape": BranchesOnShape,
    "checkpointed_when_training": CheckpointedWhenTraining,
    "hand_written_softmax_backward": HandWrittenSoftmax,
    "folded_heads_batch_major": FoldedHeadsBatchMajor,
}
"""Variants that compute exactly cross-attention, by other routes."""


# -- the modules shapetrace ships, as check_attention_module factories -----------------------
def seed_reference(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return CrossAttention(query_dim, context_dim, num_heads=heads)


def einops_module(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return EinopsCrossAttention(query_dim, context_dim, num_heads=heads)


def sdpa_module(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return SDPACrossAttention(query_dim, context_dim, num_heads=heads)


SHIPPED = {"seed_reference": seed_reference, "einops": einops_module, "sdpa": sdpa_module}
