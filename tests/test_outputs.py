"""``shapetrace._outputs``: outputs are checked and reserved before the work, appear whole on
commit, and vanish (leaving what was there) on an error or Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shapetrace._outputs import Outputs, check_output_file, check_output_folder
from shapetrace.errors import OutputError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _nothing_foreign(folder: Path) -> list[str]:
    return []


def test_a_file_appears_only_on_commit_with_a_new_files_permissions(tmp_path: Path) -> None:
    target = tmp_path / "j.json"
    target.write_text("old")
    with Outputs() as outputs:
        pending = outputs.file(target, "--json")
        pending.write_text("new")
        assert target.read_text() == "old"  # untouched until the work is done
        outputs.commit()
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["j.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("stop", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_error_or_ctrl_c_discards_every_reserved_output(tmp_path: Path, stop) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    with pytest.raises(type(stop)), Outputs() as outputs:
        outputs.file(tmp_path / "j.json", "--json").write_text("half")
        run = outputs.folder(tmp_path / "old", "--out", foreign=_nothing_foreign)
        (run.path / "grid.png").write_bytes(b"half")
        raise stop
    assert _names(tmp_path) == ["old"]
    assert _names(tmp_path / "old") == ["summary.json"]


def test_a_folder_replaces_an_earlier_run_as_a_whole(tmp_path: Path) -> None:
    out = tmp_path / "maps"
    out.mkdir()
    for name in ("01_a.png", "03_sitting.png", "summary.json"):
        (out / name).write_text("old")
    with Outputs() as outputs:
        run = outputs.folder(out, "--out", foreign=_nothing_foreign)
        assert run.path.parent == tmp_path and run.path.name.startswith(".maps.")
        (run.path / "01_a.png").write_text("new")
        (run.path / "summary.json").write_text("new")
        outputs.commit()
    assert _names(out) == ["01_a.png", "summary.json"]
    assert (out / "01_a.png").read_text() == "new"
    assert _names(tmp_path) == ["maps"]


def test_a_folder_holding_other_files_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    out = tmp_path / "maps"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"--out .*maps holds files that are not an earlier"):
        Outputs().folder(out, "--out", foreign=lambda folder: ["notes.txt"])
    assert _names(tmp_path) == ["maps"]


def test_missing_parent_folders_are_made_and_removed_again_on_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), Outputs() as outputs:
        outputs.folder(tmp_path / "a" / "b" / "c", "--out", foreign=_nothing_foreign)
        raise RuntimeError
    assert _names(tmp_path) == []
    with Outputs() as outputs:
        outputs.folder(tmp_path / "a" / "b" / "c", "--out", foreign=_nothing_foreign)
        outputs.commit()
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_two_outputs_on_one_path_are_refused(tmp_path: Path) -> None:
    outputs = Outputs()
    outputs.file(tmp_path / "r", "--json")
    with pytest.raises(OutputError, match=r"--markdown .*/r and --json .*/r are the same path"):
        outputs.file(tmp_path / "." / "r", "--markdown")
    with pytest.raises(OutputError, match=r"same path \(or one holds the other\)"):
        outputs.folder(tmp_path / "r" / "..", "--out", foreign=_nothing_foreign)
    outputs.__exit__(None, None, None)
    assert _names(tmp_path) == []


def test_file_targets_are_checked_without_writing(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"is a folder; give a file inside it"):
        check_output_file(tmp_path, "--json")
    with pytest.raises(OutputError, match=r"folder .*/none does not exist"):
        check_output_file(tmp_path / "none" / "j.json", "--json")
    with pytest.raises(OutputError, match=r"the name is 300 characters, more than the 255"):
        check_output_file(tmp_path / ("n" * 300), "--json")
    with pytest.raises(OutputError, match=r"cannot write in /proc"):
        Outputs().file("/proc/j.json", "--json")
    assert _names(tmp_path) == []


def test_folder_targets_are_checked_without_writing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("a file")
    for path, match in [
        ("f", r"--out f is a file; give a folder"),
        ("f/sub", r"f is a file, not a folder"),
        (".", r"--out . is the current folder or holds it"),
        ("", r"--out '' names no folder"),
        ("n" * 300, r"more than the 255 bytes"),
    ]:
        with pytest.raises(OutputError, match=match):
            check_output_folder(path, "--out")
    assert _names(tmp_path) == ["f"]


def test_a_full_disk_while_writing_is_an_output_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    import errno

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "j.json"
    target.write_text("old")
    with pytest.raises(OutputError, match=r"--json .*j.json: writing failed \(No space left"):
        with Outputs() as outputs:
            pending = outputs.file(target, "--json")
            monkeypatch.setattr(Path, "write_text", full)
            pending.write_text("new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["j.json"]
