"""Sessions: `nox` runs lint, typecheck and tests (what CI runs; the tests include the golden
journeys, which `nox -s regression` runs alone).

Every session runs in one shared environment, `.nox/shapetrace`: torch plus shapetrace with
its dev extras, built by the first session and reused while pyproject.toml and the torch pin
stay the same (delete the folder to build it afresh). uv builds it when it is installed
(`pip install uv`: seconds), pip otherwise; uv is given the find-links and indexes pip is
configured with, so both pick the same torch.

Torch comes from SHAPETRACE_TORCH (default: the pinned CPU build, torch==2.13.0); set it to
pick your own build, e.g. SHAPETRACE_TORCH="torch" for the newest release with CUDA. Another
pin gets an environment of its own beside the default one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"  # every session uses the shared environment below
nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).resolve().parent
DEFAULT_TORCH = "torch==2.13.0"
TORCH = os.environ.get("SHAPETRACE_TORCH", DEFAULT_TORCH)
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROFILE = "ci" if CI else os.environ.get("SHAPETRACE_HYPOTHESIS_PROFILE", "dev")
_SUFFIX = "" if TORCH == DEFAULT_TORCH else "-" + hashlib.sha256(TORCH.encode()).hexdigest()[:8]
ENV = ROOT / ".nox" / f"shapetrace{_SUFFIX}"
BIN = ENV / ("Scripts" if os.name == "nt" else "bin")


def _uv() -> str | None:
    """The uv binary, from PATH or the `uv` package; None when there is none."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin  # the PyPI package ships the binary

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return None


def _pip_sources() -> list[str]:
    """pip's configured find-links and indexes (files and PIP_* variables) as uv flags;
    uv reads neither pip.conf nor PIP_*, and would otherwise take torch from PyPI alone."""
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return []
    flags = {"find-links": "--find-links", "extra-index-url": "--extra-index-url"}
    flags["index-url"] = "--default-index"
    found: dict[str, list[str]] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        if option in flags:
            for item in value.strip().strip("'\"").split():
                found.setdefault(flags[option], [])
                if item not in found[flags[option]]:
                    found[flags[option]].append(item)
    return [arg for flag, items in found.items() for item in items for arg in (flag, item)]


def _stamp() -> str:
    """What the environment was built from: pyproject.toml, the torch pin, the Python."""
    text = (ROOT / "pyproject.toml").read_bytes() + TORCH.encode() + sys.version.encode()
    return hashlib.sha256(text).hexdigest()


def _env(session: nox.Session) -> None:
    """Build the shared environment unless it is up to date, then run the session in it."""
    marker = ENV / ".built-from"
    if marker.is_file() and marker.read_text() == _stamp():
        session.log(f"reusing {ENV.relative_to(ROOT)} (torch: {TORCH})")
    else:
        python = BIN / "python"
        uv = _uv()
        if uv is not None:
            session.run(uv, "venv", "--quiet", "--python", sys.executable, str(ENV), external=True)
            session.run(
                uv, "pip", "install", "--quiet", "--python", str(python), *_pip_sources(),
                TORCH, "-e", ".[dev]", external=True,
            )  # fmt: skip
        else:
            session.log("uv not found: building with pip (pip install uv makes this faster)")
            pip = [str(python), "-m", "pip", "install", "--quiet"]
            session.run(sys.executable, "-m", "venv", "--clear", str(ENV), external=True)
            session.run(*pip, TORCH, external=True)
            session.run(*pip, "-e", ".[dev]", external=True)
        marker.write_text(_stamp())
    session.env["VIRTUAL_ENV"] = str(ENV)
    session.env["PATH"] = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])


def _run(session: nox.Session, tool: str, *args: str) -> None:
    """Run a tool of the shared environment."""
    session.run(str(BIN / tool), *args, external=True)


def _pytest(session: nox.Session, *args: str, profile: str = PROFILE) -> None:
    session.env["SHAPETRACE_HYPOTHESIS_PROFILE"] = profile
    _run(session, "python", "-m", "pytest", *args, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The fast suite: everything but full-size SD 1.5 on CPU and CUDA."""
    _env(session)
    _pytest(session, "-m", "not slow and not cuda", "-q", "-p", "no:cacheprovider")


@nox.session
def tests_cuda(session: nox.Session) -> None:
    """CUDA tests (fp16/bf16 invariants, traces on cuda); they skip without a GPU."""
    _env(session)
    _pytest(session, "-m", "cuda", "-q", "-rs")


@nox.session
def full(session: nox.Session) -> None:
    """Full-size SD 1.5 forwards on CPU (minutes)."""
    _env(session)
    _pytest(session, "-m", "slow", "-q")


@nox.session
def nightly(session: nox.Session) -> None:
    """The property suite with the long Hypothesis profile."""
    _env(session)
    _pytest(session, "-m", "not slow and not cuda", "-q", profile="nightly")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the package, the tests, the benchmarks and this file."""
    _env(session)
    _run(session, "ruff", "check", "shapetrace", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package."""
    _env(session)
    _run(session, "mypy", "shapetrace")


@nox.session
def trace(session: nox.Session) -> None:
    """Set up and run the main job: `shapetrace trace` on the built-in SD 1.5 (meta)."""
    _env(session)
    _run(session, "shapetrace", "trace", *session.posargs)


@nox.session
def regression(session: nox.Session) -> None:
    """Compare the golden journeys under reports/golden/; `-- --overwrite` rewrites them."""
    _env(session)
    _pytest(session, "tests/test_golden.py", "-q", "-p", "no:cacheprovider")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks written to reports/bench.json and reports/bench.md."""
    _env(session)
    _run(session, "python", "-m", "benchmarks", *session.posargs)
