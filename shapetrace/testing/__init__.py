"""Check attention code against shapetrace's invariants, in your own test suite.

    >>> from shapetrace.testing import check_attention_module
    >>> from shapetrace.testing.implementations import SDPACrossAttention
    >>> check_attention_module(SDPACrossAttention)  # raises AssertionError naming the invariant

``check_attention_module`` and ``check_attn_processor`` run every invariant with Hypothesis;
the strategies they draw from, the tolerance rule and the profiles are public too. Names are
imported on first use, so importing this package (as the pytest plugin does in every test
run) loads neither torch nor Hypothesis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shapetrace.testing._configurations import ADDED_KV_NAMES, STANDARD_NAMES, Configuration
    from shapetrace.testing._configurations import CONFIGURATIONS as PROCESSOR_CONFIGURATIONS
    from shapetrace.testing._violation import (
        CheckArgumentError,
        InvariantViolation,
        ModuleContractError,
    )
    from shapetrace.testing.check import (
        DEFAULT_MAX_EXAMPLES,
        PINNED,
        check_attention_module,
        check_attn_processor,
    )
    from shapetrace.testing.profiles import PROFILES, load_profile, register_profiles
    from shapetrace.testing.properties import INVARIANT_NAMES, INVARIANTS, Invariant
    from shapetrace.testing.strategies import (
        DEFAULT_MAX_COST,
        HEAD_COUNTS,
        HEAD_DIMS,
        ODD_SIZES,
        TOKEN_SIZES,
        AttentionShapes,
        attention_shapes,
        random_key_mask,
        random_qkv,
        random_tensor,
        seeds,
        sizes,
    )
    from shapetrace.testing.tolerance import (
        assert_close,
        calibrated_atol,
        default_atol,
        max_abs_diff,
    )

_WHERE = {
    "shapetrace.testing._configurations": ("ADDED_KV_NAMES", "STANDARD_NAMES", "Configuration"),
    "shapetrace.testing._violation": (
        "CheckArgumentError",
        "InvariantViolation",
        "ModuleContractError",
    ),
    "shapetrace.testing.check": (
        "DEFAULT_MAX_EXAMPLES",
        "PINNED",
        "check_attention_module",
        "check_attn_processor",
    ),
    "shapetrace.testing.profiles": ("PROFILES", "load_profile", "register_profiles"),
    "shapetrace.testing.properties": ("INVARIANTS", "INVARIANT_NAMES", "Invariant"),
    "shapetrace.testing.strategies": (
        "DEFAULT_MAX_COST",
        "HEAD_COUNTS",
        "HEAD_DIMS",
        "ODD_SIZES",
        "TOKEN_SIZES",
        "AttentionShapes",
        "attention_shapes",
        "random_key_mask",
        "random_qkv",
        "random_tensor",
        "seeds",
        "sizes",
    ),
    "shapetrace.testing.tolerance": (
        "assert_close",
        "calibrated_atol",
        "default_atol",
        "max_abs_diff",
    ),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
_RENAMED = {"PROCESSOR_CONFIGURATIONS": ("shapetrace.testing._configurations", "CONFIGURATIONS")}

__all__ = [
    "ADDED_KV_NAMES",
    "DEFAULT_MAX_COST",
    "DEFAULT_MAX_EXAMPLES",
    "HEAD_COUNTS",
    "HEAD_DIMS",
    "INVARIANTS",
    "INVARIANT_NAMES",
    "ODD_SIZES",
    "PINNED",
    "PROCESSOR_CONFIGURATIONS",
    "PROFILES",
    "STANDARD_NAMES",
    "TOKEN_SIZES",
    "AttentionShapes",
    "CheckArgumentError",
    "Configuration",
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


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        module, attribute = _RENAMED[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'shapetrace.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
