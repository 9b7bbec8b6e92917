"""Outputs that are checked before any work and appear whole or not at all.

A file is written under a temporary name beside its target and renamed into place; a run
folder is filled under a temporary name beside its target and swapped in as a whole, so a
folder holding an earlier run is replaced, never mixed. Both are reserved before the work
starts (which is what proves the folder writable) and removed again on an error or Ctrl-C:

>>> with Outputs() as outputs:                                     # doctest: +SKIP
...     report = outputs.file("report.md", "--markdown")             # checked, reserved
...     run = outputs.folder("maps/", "--out", foreign=foreign_files)
...     ...                                                          # the work
...     report.write_text(text)
...     save(run.path / "grid.png")
...     outputs.commit()                                             # renamed into place
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from shapetrace._checks import shorten, show
from shapetrace.errors import OutputError

__all__ = [
    "Outputs",
    "PendingFile",
    "PendingFolder",
    "check_output_file",
    "check_output_folder",
    "writing",
]


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _check_name(path: Path, flag: str, folder: Path) -> None:
    limit = _name_max(folder) if _is_dir(folder) else 255
    if len(path.name.encode("utf-8", "surrogateescape")) > limit:
        raise OutputError(
            f"{flag} {show(path)}: the name is {len(path.name):,} characters, more than the "
            f"{limit} bytes a file name may have here; use a shorter name"
        )


def check_output_file(path: str | Path, flag: str) -> Path:
    """The target of a file output, checked without writing: a name, not a folder, in a
    folder that exists. OutputError naming ``flag`` otherwise.

    >>> check_output_file("journey.json", "--json")
    PosixPath('journey.json')
    """
    if str(path).strip() == "":
        raise OutputError(f"{flag} '' names no file; give a file name, e.g. {flag} journey.json")
    target = Path(path).expanduser()
    parent = target.parent
    _check_name(target, flag, parent)
    if _is_dir(target):
        raise OutputError(
            f"{flag} {show(target)} is a folder; give a file inside it, e.g. "
            f"{flag} {show(target / 'journey.json')}"
        )
    if not _exists(parent):
        raise OutputError(
            f"{flag} {show(target)}: folder {show(parent)} does not exist; create it first "
            "or choose another"
        )
    if not parent.is_dir():
        raise OutputError(f"{flag} {show(target)}: {show(parent)} is a file, not a folder")
    return target


def check_output_folder(path: str | Path, flag: str) -> Path:
    """The target of a folder output, checked without writing: not a file, not the current
    folder or one holding it, no file on the way. OutputError naming ``flag`` otherwise.

    >>> check_output_folder("maps", "--out")
    PosixPath('maps')
    """
    if str(path).strip() == "":
        raise OutputError(f"{flag} '' names no folder; give one, e.g. {flag} maps/")
    target = Path(path).expanduser()
    for part in (target, *target.parents):
        _check_name(part, flag, part.parent if _is_dir(part.parent) else Path("."))
    if _exists(target) and not _is_dir(target):
        raise OutputError(f"{flag} {show(target)} is a file; give a folder, e.g. {flag} maps/")
    resolved, here = target.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise OutputError(
            f"{flag} {show(path)} is the current folder or holds it; a run replaces its "
            f"{flag} folder as a whole, so give a folder of its own, e.g. {flag} maps/"
        )
    for up in target.parents:
        if _exists(up):
            if not _is_dir(up):
                raise OutputError(f"{flag} {show(target)}: {show(up)} is a file, not a folder")
            break
    return target


class PendingFile:
    """A file output reserved under a temporary name in its target's folder."""

    def __init__(self, target: Path, flag: str) -> None:
        self.target, self.flag = target, flag
        try:
            fd, name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name[:40]}.", suffix=".tmp"
            )
        except OSError as err:
            raise OutputError(
                f"{flag} {show(target)}: cannot write in {show(target.parent)} "
                f"({err.strerror or err}); choose a folder you can write to"
            ) from None
        os.close(fd)
        self.temp = Path(name)

    def write_text(self, text: str) -> None:
        """Fill the temporary file (the target is untouched until ``commit``)."""
        with writing(self.flag, self.target):
            self.temp.write_text(text, encoding="utf-8")

    def commit(self) -> Path:
        """Rename the temporary file onto the target, with the permissions a new file gets."""
        with writing(self.flag, self.target):
            os.chmod(self.temp, 0o666 & ~_umask())
            os.replace(self.temp, self.target)
        return self.target

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)


class PendingFolder:
    """A folder output filled under a temporary name beside its target, swapped in whole.

    ``foreign(folder)`` names what in an existing target is not an earlier run's files; the
    target is replaced as a whole when that is nothing, and refused up front otherwise.
    """

    def __init__(self, target: Path, flag: str, *, foreign: Callable[[Path], list[str]]) -> None:
        self.target, self.flag = target, flag
        found = foreign(target) if _is_dir(target) else []
        if found:
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            raise OutputError(
                f"{flag} {show(target)} holds files that are not an earlier run's "
                f"({', '.join(shorten(n, 40) for n in found[:3])}{more}); a run replaces its "
                "folder as a whole, so give a new or empty folder, or move those files away"
            )
        self.created: list[Path] = []
        missing = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self.created.append(folder)
            self.path = Path(
                tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name[:40]}.", suffix=".tmp")
            )
        except OSError as err:
            self._remove_created()
            raise OutputError(
                f"{flag} {show(target)}: cannot write in {show(target.parent)} "
                f"({err.strerror or err}); choose a folder you can write to"
            ) from None

    def commit(self) -> Path:
        """Put the filled folder in the target's place; an earlier run there goes as a whole."""
        with writing(self.flag, self.target):
            return self._swap()

    def _swap(self) -> Path:
        mask = _umask()
        os.chmod(self.path, 0o777 & ~mask)
        for file in self.path.rglob("*"):
            if file.is_file():  # as a new file gets them (some writers make 0600 files)
                os.chmod(file, 0o666 & ~mask)
        if not self.target.exists():
            os.rename(self.path, self.target)
            return self.target
        old = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name[:40]}."))
        os.rename(self.target, old / "run")
        try:
            os.rename(self.path, self.target)
        except BaseException:
            os.rename(old / "run", self.target)  # put the earlier run back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break


@contextmanager
def writing(flag: str, target: Path) -> Iterator[None]:
    """Turn an OSError while writing an output (a full disk, a folder gone) into an
    OutputError naming the flag; the reserved outputs are then discarded as on any error."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(
            f"{flag} {show(target)}: writing failed ({err.strerror or err}); nothing was "
            "written, free some space or choose another place"
        ) from err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Outputs:
    """The outputs of one command: reserved up front, committed together, or all discarded
    when the block ends without :meth:`commit` (an error, Ctrl-C)."""

    def __init__(self) -> None:
        self.pending: list[PendingFile | PendingFolder] = []
        self.committed = False

    def file(self, path: str | Path, flag: str) -> PendingFile:
        """Check and reserve a file output (refused when another output has its path)."""
        target = check_output_file(path, flag)
        self._check_distinct(target, flag)
        pending = PendingFile(target, flag)
        self.pending.append(pending)
        return pending

    def folder(
        self, path: str | Path, flag: str, *, foreign: Callable[[Path], list[str]]
    ) -> PendingFolder:
        """Check and reserve a folder output (see :class:`PendingFolder` for ``foreign``)."""
        target = check_output_folder(path, flag)
        self._check_distinct(target, flag)
        pending = PendingFolder(target, flag, foreign=foreign)
        self.pending.append(pending)
        return pending

    def _check_distinct(self, target: Path, flag: str) -> None:
        mine = Path(os.path.realpath(target))
        for other in self.pending:
            theirs = Path(os.path.realpath(other.target))
            if mine == theirs or mine in theirs.parents or theirs in mine.parents:
                raise OutputError(
                    f"{flag} {show(target)} and {other.flag} {show(other.target)} are the "
                    "same path (or one holds the other), so one would overwrite the other; "
                    "give each output its own path"
                )

    def commit(self) -> None:
        """Move every output into place."""
        for pending in self.pending:
            pending.commit()
        self.committed = True

    def __enter__(self) -> Outputs:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if not self.committed:
            for pending in self.pending:
                pending.discard()
