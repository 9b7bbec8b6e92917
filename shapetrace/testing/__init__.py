"""Check attention code against shapetrace's invariants, in your own test suite.

    >>> from shapetrace.testing import check_attention_module
    >>> from shapetrace.testing.implementations import SDPACrossAttention
    >>> check_attention_module(SDPACrossAttention)  # raises AssertionError naming the invariant

``check_attention_module`` and ``check_attn_processor`` run every invariant with Hypothesis;
the strategies they draw from, the tolerance rule and the profiles are public too.
"""

from shapetrace.testing._violation import InvariantViolation, ModuleContractError
from shapetrace.testing.check import (
    DEFAULT_MAX_EXAMPLES,
    check_attention_module,
    check_attn_processor,
)
from shapetrace.testing.profiles import PROFILES, load_profile, register_profiles
from shapetrace.testing.properties import INVARIANT_NAMES, INVARIANTS, Invariant
from shapetrace.testing.strategies import (
    ODD_SIZES,
    AttentionShapes,
    attention_shapes,
    random_key_mask,
    random_qkv,
    random_tensor,
    seeds,
    sizes,
)
from shapetrace.testing.tolerance import assert_close, calibrated_atol, default_atol, max_abs_diff

__all__ = [
    "DEFAULT_MAX_EXAMPLES",
    "INVARIANTS",
    "INVARIANT_NAMES",
    "ODD_SIZES",
    "PROFILES",
    "AttentionShapes",
    "Invariant",
    "InvariantViolation",
    "ModuleContractError",
    "assert_close",
    "attention_shapes",
    "calibrated_atol",
    "check_attention_module",
    "check_attn_processor",
    "default_atol",
    "load_profile",
    "max_abs_diff",
    "random_key_mask",
    "random_qkv",
    "random_tensor",
    "register_profiles",
    "seeds",
    "sizes",
]
