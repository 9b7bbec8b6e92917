"""Hypothesis profiles for checking attention: ``shapetrace-ci``, ``shapetrace-dev`` and
``shapetrace-nightly``, each with the shapes and example counts the checks use under it.

- ``ci``: derandomized (the same examples every run), no deadline, 25 examples a property
  test, 10 per invariant in the checks, the bounds of :func:`attention_shapes`' defaults;
- ``dev``: the same bounds, random examples, 50 a property test, 20 per invariant;
- ``nightly``: random, 500 examples a test, 60 per invariant, larger shapes.

The profiles are registered under namespaced names only (a project's own ``ci`` profile is
never replaced) and loaded only when asked: :func:`load_profile`, the pytest plugin's
``--shapetrace-profile`` or ``SHAPETRACE_HYPOTHESIS_PROFILE``. The checks read the active
one's shape bounds and example counts (``ci``'s when none is active).

Example::

    >>> load_profile("ci")
    'ci'
    >>> shape_bounds()["max_context_tokens"], check_max_examples()
    (320, 10)
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any

__all__ = [
    "ENV_VAR",
    "PROFILES",
    "active_profile",
    "check_max_examples",
    "hypothesis_name",
    "load_profile",
    "profile_from_env",
    "register_profiles",
    "shape_bounds",
]

ENV_VAR = "SHAPETRACE_HYPOTHESIS_PROFILE"
"""Environment variable naming the profile the pytest plugin loads."""

PREFIX = "shapetrace-"
"""Hypothesis registers each profile as ``shapetrace-<name>``."""

PROFILES: MappingProxyType[str, dict[str, Any]] = MappingProxyType(
    {
        "ci": {"max_examples": 25, "derandomize": True, "database": None, "print_blob": True},
        "dev": {"max_examples": 50, "derandomize": False},
        "nightly": {"max_examples": 500, "derandomize": False, "print_blob": True},
    }
)
"""Each profile's Hypothesis settings, by short name (all: no deadline, no too_slow or
data_too_large health check)."""

_CHECK_EXAMPLES = MappingProxyType({"ci": 10, "dev": 20, "nightly": 60})

_CI_BOUNDS: dict[str, int] = {
    "max_batch": 3,
    "max_heads": 8,
    "max_head_dim": 80,
    "max_query_tokens": 4096,
    "max_context_tokens": 320,
    "max_context_dim": 64,
    "max_cost": 2**22,
}
_SHAPE_BOUNDS: MappingProxyType[str, dict[str, int]] = MappingProxyType(
    {
        "ci": _CI_BOUNDS,
        "dev": _CI_BOUNDS,
        "nightly": {
            "max_batch": 4,
            "max_heads": 24,
            "max_head_dim": 160,
            "max_query_tokens": 8192,
            "max_context_tokens": 1024,
            "max_context_dim": 160,
            "max_cost": 2**25,
        },
    }
)

_active: str | None = None


def hypothesis_name(name: str) -> str:
    """The name Hypothesis knows profile ``name`` by.

    >>> hypothesis_name("ci")
    'shapetrace-ci'
    """
    return f"{PREFIX}{name}"


def register_profiles() -> None:
    """Register ``shapetrace-ci``, ``shapetrace-dev`` and ``shapetrace-nightly`` with
    Hypothesis (safe to call again); no profile is loaded and no other name is touched.

    >>> register_profiles()
    >>> settings.get_profile("shapetrace-ci").derandomize  # doctest: +SKIP
    True
    """
    from hypothesis import HealthCheck, settings

    base = settings.get_profile("default")  # not the profile loaded now
    common: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": (HealthCheck.too_slow, HealthCheck.data_too_large),
    }
    for name, values in PROFILES.items():
        settings.register_profile(hypothesis_name(name), base, **common, **values)


def _short(name: str) -> str:
    """``"shapetrace-ci"`` or ``"ci"`` -> ``"ci"``; unknown names raise ValueError."""
    short = name.removeprefix(PREFIX)
    if short not in PROFILES:
        raise ValueError(
            f"unknown Hypothesis profile {name!r}; choose one of {', '.join(PROFILES)} "
            f"(registered as {', '.join(map(hypothesis_name, PROFILES))})"
        )
    return short


def load_profile(name: str) -> str:
    """Register the profiles and load ``name`` (``"ci"`` or ``"shapetrace-ci"``); the short name.

    >>> load_profile("nightly-ish")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown Hypothesis profile 'nightly-ish'; choose one of ci, dev, nightly ...
    """
    global _active
    from hypothesis import settings

    short = _short(name)
    register_profiles()
    settings.load_profile(hypothesis_name(short))
    _active = short
    return short


def active_profile() -> str | None:
    """The shapetrace profile last loaded through :func:`load_profile`, or None."""
    return _active


def shape_bounds(profile: str | None = None) -> dict[str, Any]:
    """Keyword bounds for :func:`~shapetrace.testing.strategies.attention_shapes` under
    ``profile`` (default: the active one, else ``ci``): ``nightly`` draws larger shapes.

    >>> shape_bounds("nightly")["max_query_tokens"]
    8192
    """
    return dict(_SHAPE_BOUNDS[_short(profile or _active or "ci")])


def check_max_examples(profile: str | None = None) -> int:
    """Drawn examples per invariant in the checks under ``profile`` (default: the active
    one, else ``ci``).

    >>> check_max_examples("ci"), check_max_examples("nightly")
    (10, 60)
    """
    return _CHECK_EXAMPLES[_short(profile or _active or "ci")]


def profile_from_env() -> str | None:
    """The profile named by ``SHAPETRACE_HYPOTHESIS_PROFILE``, or None."""
    return os.environ.get(ENV_VAR) or None
