"""Sessions: `nox` runs lint, typecheck and tests (what CI runs; the tests include the golden
journeys, which `nox -s regression` runs alone).

Torch is installed first from SHAPETRACE_TORCH (default: the pinned CPU build, torch==2.13.0);
set it to pick your own build, e.g. SHAPETRACE_TORCH="torch" for the newest release with CUDA.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = False

TORCH = os.environ.get("SHAPETRACE_TORCH", "torch==2.13.0")
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROFILE = "ci" if CI else os.environ.get("SHAPETRACE_HYPOTHESIS_PROFILE", "dev")


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


def _pytest(session: nox.Session, *args: str, profile: str = PROFILE) -> None:
    session.env["SHAPETRACE_HYPOTHESIS_PROFILE"] = profile
    session.run("python", "-m", "pytest", *args, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The fast suite: everything but full-size SD 1.5 on CPU and CUDA."""
    _install(session)
    _pytest(session, "-m", "not slow and not cuda", "-q", "-p", "no:cacheprovider")


@nox.session
def tests_cuda(session: nox.Session) -> None:
    """CUDA tests (fp16/bf16 invariants, traces on cuda); they skip without a GPU."""
    _install(session)
    _pytest(session, "-m", "cuda", "-q", "-rs")


@nox.session
def full(session: nox.Session) -> None:
    """Full-size SD 1.5 forwards on CPU (minutes)."""
    _install(session)
    _pytest(session, "-m", "slow", "-q")


@nox.session
def nightly(session: nox.Session) -> None:
    """The property suite with the long Hypothesis profile."""
    _install(session)
    _pytest(session, "-m", "not slow and not cuda", "-q", profile="nightly")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "shapetrace", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "dev")
    session.run("mypy", "shapetrace")


@nox.session
def trace(session: nox.Session) -> None:
    """Set up and run the main job: `shapetrace trace` on the built-in SD 1.5 (meta)."""
    _install(session)
    session.run("shapetrace", "trace", *session.posargs)


@nox.session
def regression(session: nox.Session) -> None:
    """Compare the golden journeys under reports/golden/; `-- --overwrite` rewrites them."""
    _install(session)
    _pytest(session, "tests/test_golden.py", "-q", "-p", "no:cacheprovider")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks written to reports/bench.json and reports/bench.md."""
    _install(session)
    session.run("python", "-m", "benchmarks", *session.posargs)
