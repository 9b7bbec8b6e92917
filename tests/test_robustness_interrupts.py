"""Ctrl-C (or SIGTERM) in a real process: ``shapetrace`` stops with one line and exit 130
(143), no traceback, and leaves no output and no temporary file behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._cli import assert_empty

#: Long enough that the run is still going when the signal comes.
MAPS = ["maps", "--prompt", "a cat", "--model", "tiny", "--steps", "999", "--height", "64",
        "--width", "64", "--quiet", "--out", "o"]  # fmt: skip
TRACE = ["trace", "--model", "sd15", "--device", "cpu", "--height", "256", "--width", "256",
         "--json", "j.json", "--markdown", "r.md"]  # fmt: skip


def _default_signals() -> None:
    """In the child: Ctrl-C and SIGTERM as a terminal gives them. A runner started in the
    background (``nohup ... &`` from a script) ignores SIGINT, the child inherits that, and
    Python then installs no KeyboardInterrupt handler: the signal would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupt(
    argv: list[str], cwd: Path, *, ready: str, stream: str, sig: int = signal.SIGINT
) -> tuple[int, str]:
    """Run ``shapetrace ARGV``, send ``sig`` once ``ready`` is printed; (status, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "shapetrace", *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )
    watched = process.stdout if stream == "stdout" else process.stderr
    assert watched is not None
    seen = []
    deadline = time.monotonic() + 240
    try:
        for line in watched:
            seen.append(line)
            if ready in line:
                break
            assert time.monotonic() < deadline, "the command never started its run"
        else:
            pytest.fail(f"the command ended before its run: {''.join(seen)}")
        time.sleep(1.0)  # inside the work now
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, "".join(seen) + err if stream == "stderr" else err


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_kill_in_maps_exits_in_one_line_and_leaves_nothing(
    tmp_path: Path, sig: int, status: int
) -> None:
    code, err = _interrupt(MAPS, tmp_path, ready="needs about", stream="stdout", sig=sig)
    assert code == status, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "shapetrace: interrupted; nothing was written"
    assert_empty(tmp_path)


def test_ctrl_c_in_trace_exits_130_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    code, err = _interrupt(TRACE, tmp_path, ready="needs about", stream="stderr")
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "shapetrace: interrupted; nothing was written"
    assert_empty(tmp_path)
