"""Shared test setup: the ``shapetrace-ci`` Hypothesis profile unless another was asked for,
our ``cuda`` marker's skip without a GPU, a single-thread fixture for the many tiny attention
ops, and the mutation score's summary.

shapetrace's own pytest plugin (``shapetrace.testing.pytest_plugin``, an entry point) is a
guest: it loads the profile named by ``--shapetrace-profile`` or
``SHAPETRACE_HYPOTHESIS_PROFILE`` and gives the ``check_attention`` fixtures, but imposes no
marker; this suite's ``cuda`` marker (pyproject.toml) is skipped here, through the plugin's
helper.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from shapetrace.testing import profiles
from shapetrace.testing.pytest_plugin import skip_marked_without_cuda

pytest_plugins = ["pytester"]

MUTATION_BOARD = pytest.StashKey[dict[str, tuple[str, str, str | None]]]()
"""Planted bug -> (module or processor, its kind, the invariant its check named; None: it
survived), filled by test_mutants."""
FALSE_ALARMS = pytest.StashKey[dict[str, tuple[str, str | None]]]()
"""Correct variant -> (module or processor, the invariant wrongly reported; None: it passed),
filled by test_mutants."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--overwrite",
        action="store_true",
        help="rewrite the golden journeys in reports/golden/ instead of comparing them",
    )


@pytest.fixture
def overwrite(pytestconfig: pytest.Config) -> bool:
    """Whether golden files are rewritten on purpose (``--overwrite``)."""
    return bool(pytestconfig.getoption("--overwrite"))


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if profiles.active_profile() is None:  # plain `pytest`: fast and derandomized
        profiles.load_profile("ci")
    config.stash[MUTATION_BOARD] = {}
    config.stash[FALSE_ALARMS] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_marked_without_cuda(items, ["cuda"])  # our marker, skipped with the reason


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores, threads only slow tiny matmuls down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def restore_profile() -> Iterator[None]:
    """Put the session's shapetrace profile back after a test loads another."""
    active = profiles.active_profile() or "ci"
    yield
    profiles.load_profile(active)


@pytest.fixture(scope="session")
def mutation_board(pytestconfig: pytest.Config) -> dict[str, tuple[str, str, str | None]]:
    return pytestconfig.stash[MUTATION_BOARD]


@pytest.fixture(scope="session")
def false_alarms(pytestconfig: pytest.Config) -> dict[str, tuple[str, str | None]]:
    return pytestconfig.stash[FALSE_ALARMS]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    board = config.stash.get(MUTATION_BOARD, {})
    alarms = config.stash.get(FALSE_ALARMS, {})
    if not board and not alarms:
        return
    write = terminalreporter.write_line
    terminalreporter.section("shapetrace mutation score")
    for group in ("module", "processor"):
        bugs = {name: v for name, v in board.items() if v[0] == group}
        variants = {name: v for name, v in alarms.items() if v[0] == group}
        killed = sum(named is not None for _, _, named in bugs.values())
        raised = sum(named is not None for _, named in variants.values())
        write(
            f"{group}s: planted bugs caught {killed}/{len(bugs)}; "
            f"false alarms on correct variants {raised}/{len(variants)}"
        )
        kinds: dict[str, list[bool]] = {}
        for _, kind, named in bugs.values():
            kinds.setdefault(kind, []).append(named is not None)
        for kind, caught in kinds.items():
            write(f"  {kind:<28} caught {sum(caught)}/{len(caught)}")
    for mutant, (group, _, named) in sorted(board.items()):
        write(f"  caught  {mutant:<34} {group:<9} {named or 'SURVIVED'}")
    for variant, (group, named) in sorted(alarms.items()):
        write(f"  passed  {variant:<34} {group:<9} {named or 'no false alarm'}")
