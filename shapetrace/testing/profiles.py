"""Hypothesis profiles for shapetrace's suites: ``ci``, ``dev`` and ``nightly``.

- ``ci``: derandomized (the same examples every run), no deadline, 25 examples a test;
- ``dev``: random, no deadline, 50 examples, the example database on (failures replay);
- ``nightly``: random, no deadline, 500 examples and larger shapes (see :func:`shape_bounds`).

Example::

    >>> register_profiles()
    >>> load_profile("ci")
    'ci'
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, settings

__all__ = [
    "ENV_VAR",
    "PROFILES",
    "active_profile",
    "check_max_examples",
    "load_profile",
    "profile_from_env",
    "register_profiles",
    "shape_bounds",
]

ENV_VAR = "SHAPETRACE_HYPOTHESIS_PROFILE"
"""Environment variable naming the profile the pytest plugin loads."""

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": (HealthCheck.too_slow, HealthCheck.data_too_large),
}

PROFILES: MappingProxyType[str, dict[str, Any]] = MappingProxyType(
    {
        "ci": {
            **_COMMON,
            "max_examples": 25,
            "derandomize": True,
            "database": None,
            "print_blob": True,
        },
        "dev": {**_COMMON, "max_examples": 50, "derandomize": False},
        "nightly": {**_COMMON, "max_examples": 500, "derandomize": False, "print_blob": True},
    }
)
"""Each profile's Hypothesis settings, by name."""

_CHECK_EXAMPLES = MappingProxyType({"ci": 10, "dev": 20, "nightly": 100})

_SHAPE_BOUNDS: MappingProxyType[str, dict[str, int]] = MappingProxyType(
    {
        "ci": {
            "max_batch": 3,
            "max_heads": 4,
            "max_head_dim": 16,
            "max_query_tokens": 80,
            "max_context_tokens": 80,
            "max_context_dim": 64,
        },
        "dev": {
            "max_batch": 3,
            "max_heads": 4,
            "max_head_dim": 16,
            "max_query_tokens": 80,
            "max_context_tokens": 80,
            "max_context_dim": 64,
        },
        "nightly": {
            "max_batch": 4,
            "max_heads": 8,
            "max_head_dim": 48,
            "max_query_tokens": 260,
            "max_context_tokens": 160,
            "max_context_dim": 160,
        },
    }
)

_active: str | None = None


def register_profiles() -> None:
    """Register ``ci``, ``dev`` and ``nightly`` with Hypothesis (safe to call again)."""
    base = settings.get_profile("default")  # not the profile loaded now
    for name, values in PROFILES.items():
        settings.register_profile(f"shapetrace-{name}", base, **values)
        settings.register_profile(name, base, **values)


def load_profile(name: str) -> str:
    """Register the profiles and load ``name``; unknown names raise ValueError.

    >>> load_profile("nightly-ish")
    Traceback (most recent call last):
    ...
    ValueError: unknown Hypothesis profile 'nightly-ish'; choose one of ci, dev, nightly
    """
    global _active
    if name not in PROFILES:
        raise ValueError(
            f"unknown Hypothesis profile {name!r}; choose one of {', '.join(PROFILES)}"
        )
    register_profiles()
    settings.load_profile(name)
    _active = name
    return name


def active_profile() -> str | None:
    """The shapetrace profile last loaded through :func:`load_profile`, or None."""
    return _active


def shape_bounds(profile: str | None = None) -> dict[str, int]:
    """Keyword bounds for :func:`~shapetrace.testing.strategies.attention_shapes` under
    ``profile`` (default: the active one, else ``ci``): ``nightly`` draws larger shapes.

    >>> shape_bounds("nightly")["max_query_tokens"]
    260
    """
    return dict(_SHAPE_BOUNDS[profile or _active or "ci"])


def check_max_examples(profile: str | None = None) -> int:
    """Drawn examples per invariant for ``check_attention_module`` under ``profile``."""
    return _CHECK_EXAMPLES[profile or _active or "ci"]


def profile_from_env() -> str | None:
    """The profile named by ``SHAPETRACE_HYPOTHESIS_PROFILE``, or None."""
    return os.environ.get(ENV_VAR) or None
