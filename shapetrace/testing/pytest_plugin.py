"""pytest plugin (entry point ``pytest11: shapetrace``): a guest in every test run.

Installing shapetrace loads this plugin into every pytest run of every project in the
environment, so it changes nothing unless asked. Importing it loads neither torch nor
Hypothesis; it registers no marker and no Hypothesis profile of its own accord. It offers:

- ``--shapetrace-profile {ci,dev,nightly}`` (or ``SHAPETRACE_HYPOTHESIS_PROFILE``): register
  and load the namespaced profile ``shapetrace-<name>``; nothing is loaded otherwise;
- ``shapetrace_cuda_markers`` (ini, off by default): marker names whose tests are skipped,
  with the reason, when ``torch.cuda.is_available()`` is False (e.g. ``cuda``), for projects
  that want that; :func:`skip_marked_without_cuda` does the same from a conftest;
- fixtures ``check_attention`` and ``check_processor`` (the checks, with as many examples as
  the profile asks for), ``attention_device`` (each device in turn: "cpu", and "cuda",
  skipped with the reason where there is none), ``attention_devices`` and
  ``shapetrace_profile``. A project's own fixture of the same name takes precedence.

Example test file::

    def test_my_attention_keeps_every_invariant(check_attention):
        check_attention(MyCrossAttention)

    def test_my_attention_on_every_device(check_attention, attention_device):
        check_attention(MyCrossAttention, device=attention_device)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from shapetrace.testing import profiles

__all__ = [
    "attention_device",
    "attention_devices",
    "check_attention",
    "check_processor",
    "shapetrace_profile",
    "skip_marked_without_cuda",
]

_CUDA_INI = "shapetrace_cuda_markers"


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _no_cuda_reason() -> str:
    import torch

    return f"needs a CUDA device: torch.cuda.is_available() is False (torch {torch.__version__})"


def skip_marked_without_cuda(items: Iterable[pytest.Item], markers: Iterable[str]) -> int:
    """Skip, with the reason, the ``items`` carrying any of ``markers`` when there is no CUDA
    device; how many were skipped. torch is imported only when some item is marked.

    For a conftest::

        def pytest_collection_modifyitems(items):
            skip_marked_without_cuda(items, ["cuda"])
    """
    names = list(markers)
    marked = [i for i in items if any(i.get_closest_marker(n) is not None for n in names)]
    if not marked or _cuda_available():
        return 0
    skip = pytest.mark.skip(reason=_no_cuda_reason())
    for item in marked:
        item.add_marker(skip)
    return len(marked)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shapetrace", "shapetrace attention checks")
    group.addoption(
        "--shapetrace-profile",
        action="store",
        default=None,
        choices=sorted(profiles.PROFILES),
        help=f"load the Hypothesis profile shapetrace-NAME (default: ${profiles.ENV_VAR}, "
        "else none)",
    )
    parser.addini(
        _CUDA_INI,
        type="linelist",
        default=[],
        help="markers whose tests shapetrace skips when CUDA is unavailable (default: none)",
    )


_LOADED = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--shapetrace-profile", default=None) or profiles.profile_from_env()
    if name:
        try:
            config.stash[_LOADED] = profiles.load_profile(name)
        except ValueError as err:
            raise pytest.UsageError(f"{profiles.ENV_VAR}: {err}") from None


def pytest_report_header(config: pytest.Config) -> str | None:
    name = config.stash.get(_LOADED, None)
    if name is None:
        return None  # a guest says nothing unless it was asked to do something
    return f"shapetrace: Hypothesis profile {profiles.hypothesis_name(name)!r}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markers = config.getini(_CUDA_INI)
    if markers:
        skip_marked_without_cuda(items, markers)


@pytest.fixture(scope="session")
def shapetrace_profile() -> str | None:
    """The shapetrace Hypothesis profile loaded for this session ("ci", ...), or None."""
    return profiles.active_profile()


@pytest.fixture(scope="session")
def attention_devices() -> list[str]:
    """The devices attention can be checked on here: ``["cpu"]``, plus ``"cuda"`` if any."""
    return ["cpu", "cuda"] if _cuda_available() else ["cpu"]


@pytest.fixture(params=["cpu", "cuda"])
def attention_device(request: pytest.FixtureRequest) -> str:
    """Each device in turn; the "cuda" case is skipped (with the reason) without a GPU."""
    device: str = request.param
    if device == "cuda" and not _cuda_available():
        pytest.skip(_no_cuda_reason())
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
