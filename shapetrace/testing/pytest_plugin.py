"""pytest plugin (entry point ``pytest11: shapetrace``): profiles, markers and fixtures.

Installed with shapetrace, it gives any test suite, without a conftest:

- ``--shapetrace-profile {ci,dev,nightly}`` (or ``SHAPETRACE_HYPOTHESIS_PROFILE``) to load
  one of shapetrace's Hypothesis profiles; nothing is loaded when neither is given;
- the ``cuda`` marker: marked tests are skipped, with the reason, when
  ``torch.cuda.is_available()`` is False;
- fixtures ``check_attention`` and ``check_processor`` (the checks, with as many examples as
  the profile asks for), ``attention_device`` (each available device: "cpu", and "cuda" when
  there is one), ``attention_devices`` and ``shapetrace_profile``.

Example test file::

    def test_my_attention_keeps_every_invariant(check_attention):
        check_attention(MyCrossAttention)

    @pytest.mark.cuda
    def test_my_attention_in_half_precision(check_attention):
        check_attention(MyCrossAttention, device="cuda", dtype=torch.float16)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from shapetrace.testing import profiles

__all__ = [
    "attention_device",
    "attention_devices",
    "check_attention",
    "check_processor",
    "shapetrace_profile",
]

CUDA_MARKER = (
    "cuda: needs a CUDA device; skipped, with the reason, when torch.cuda.is_available() is False"
)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shapetrace", "shapetrace attention invariants")
    group.addoption(
        "--shapetrace-profile",
        action="store",
        default=None,
        choices=sorted(profiles.PROFILES),
        help=f"load this Hypothesis profile (default: ${profiles.ENV_VAR}, else none)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", CUDA_MARKER)
    profiles.register_profiles()
    name = config.getoption("--shapetrace-profile", default=None) or profiles.profile_from_env()
    if name:
        try:
            profiles.load_profile(name)
        except ValueError as err:
            raise pytest.UsageError(f"{profiles.ENV_VAR}: {err}") from None


def pytest_report_header(config: pytest.Config) -> str:
    name = profiles.active_profile()
    loaded = f"Hypothesis profile {name!r}" if name else "no Hypothesis profile loaded"
    return f"shapetrace: {loaded}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked or _cuda_available():
        return
    import torch

    skip = pytest.mark.skip(
        reason="needs a CUDA device: torch.cuda.is_available() is False "
        f"(torch {torch.__version__})"
    )
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def shapetrace_profile() -> str | None:
    """The shapetrace Hypothesis profile loaded for this session ("ci", ...), or None."""
    return profiles.active_profile()


@pytest.fixture(scope="session")
def attention_devices() -> list[str]:
    """The devices attention can be checked on here: ``["cpu"]``, plus ``"cuda"`` if any."""
    return ["cpu", "cuda"] if _cuda_available() else ["cpu"]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def attention_device(request: pytest.FixtureRequest) -> str:
    """Each device in turn; the "cuda" case is skipped (with the reason) without a GPU."""
    device: str = request.param
    return device


@pytest.fixture
def check_attention() -> Callable[..., None]:
    """:func:`~shapetrace.testing.check_attention_module`, with the profile's example count."""
    from shapetrace.testing.check import check_attention_module

    return functools.partial(_with_profile_examples, check_attention_module)


@pytest.fixture
def check_processor() -> Callable[..., None]:
    """:func:`~shapetrace.testing.check_attn_processor`, with the profile's example count."""
    from shapetrace.testing.check import check_attn_processor

    return functools.partial(_with_profile_examples, check_attn_processor)


def _with_profile_examples(check: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    kwargs.setdefault("max_examples", profiles.check_max_examples())
    check(*args, **kwargs)
