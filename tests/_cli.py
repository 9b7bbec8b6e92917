"""Running the command line in-process, and the assertions every refusal must pass: the exit
status, one line on stderr (argparse's usage lines may come first), no traceback, the flag
and value named, and nothing left in the folder the command ran in."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from shapetrace.cli import main

#: Longest error line accepted: a 10,000-character value must be cut, not echoed.
LONGEST_LINE = 700


@dataclass
class Ran:
    """One command's exit status, stdout and stderr lines."""

    code: int
    out: str
    err: list[str]

    @property
    def last(self) -> str:
        return self.err[-1] if self.err else ""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Ran:
    """``shapetrace ARGV`` in this process (an exception escaping it fails the test)."""
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return Ran(code, captured.out, [x for x in captured.err.splitlines() if x.strip()])


def assert_refused(ran: Ran, code: int, *pieces: str) -> None:
    """The refusal contract: status ``code``; one ``shapetrace: error:`` line (after argparse's
    usage, if argparse refused), naming every piece; no traceback; short."""
    assert ran.code == code, (ran.code, ran.err)
    assert not any("Traceback" in line for line in ran.err), ran.err
    assert ran.last.startswith(("shapetrace: error:", "shapetrace trace: error:",
                                "shapetrace maps: error:")), ran.err  # fmt: skip
    if not any(line.startswith("usage:") for line in ran.err):
        assert len(ran.err) == 1, ran.err  # our own refusals are exactly one line
    for piece in pieces:
        assert piece in ran.last, (piece, ran.last)
    assert len(ran.last) < LONGEST_LINE, len(ran.last)


def assert_empty(folder: Path, *keep: str) -> None:
    """Nothing but ``keep`` in ``folder``: no output, no temporary file, no half-written run."""
    left = sorted(p.name for p in folder.iterdir() if p.name not in keep)
    assert left == [], left


def copy_folder(source: Path, target: Path) -> Path:
    """A copy of a model folder under a new name (names with markup, spaces, ...)."""
    return Path(shutil.copytree(source, target))
