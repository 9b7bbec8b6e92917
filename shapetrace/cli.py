"""The ``shapetrace`` command line.

``shapetrace trace`` builds a model (SD 1.5 on the meta device by default: no weights, no
compute), runs one forward at the size you ask and prints each attention layer's dimension
journey::

    $ shapetrace trace --height 256 --width 256            # the tutorial table, for real
    $ shapetrace trace --layer mid --kind cross --json journey.json
    $ shapetrace trace --model tiny --device cpu --all --markdown report.md

Other parts of shapetrace add subcommands: each module in ``_SUBCOMMANDS`` that can be imported
gets ``register(subparsers)`` called, adds its parser and sets ``func``. Heavy imports (torch,
diffusers) happen inside the commands, so ``shapetrace --help`` stays quick.

Exit status: 0 done; 1 the run finished but a check of its results failed (a runtime check
of ``trace``, non-finite maps) or the model failed inside a traced layer; 2 bad input, refused
before any work in one line naming the flag, the value and the fix; 130 interrupted (Ctrl-C;
143 for SIGTERM), with nothing left half-written.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from shapetrace._checks import shorten
from shapetrace.errors import CheckFailedError, ShapeTraceError

__all__ = ["build_parser", "main"]

#: Modules that add subcommands with ``register(subparsers)``; skipped when not installed.
_SUBCOMMANDS: tuple[str, ...] = ("shapetrace.maps.cli",)

PROCESSORS = ("AttnProcessor", "AttnProcessor2_0")
DTYPES = ("float32", "float16", "bfloat16")
KINDS = ("cross", "joint", "self")
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Longest run of characters kept from one word of an error message (paths, values).
_LONGEST_WORD = 160

_EXAMPLES = """\
examples:
  shapetrace trace --height 256 --width 256     the tutorials' (1, 1024, 320) journey
  shapetrace trace --height 512 --width 768     non-square: first grid 64x96, 6144 tokens
  shapetrace trace --layer up.3 --kind cross    cross layers of up_blocks.3
  shapetrace trace --all --json journey.json    every layer, and the JSON journey
  shapetrace trace --model sd3 --kind joint     SD3's joint attention (image and text together)
"""


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _device(text: str) -> str:
    """argparse type: meta, cpu, cuda or cuda:N (any case)."""
    name = text.strip().lower()
    if name in ("meta", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name):
        return name
    raise argparse.ArgumentTypeError(f"expected meta, cpu, cuda or cuda:N, got {shorten(text)}")


def _add_trace(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "trace",
        help="print the dimension journey of a model's attention layers",
        description=(
            "Build a model, run one forward at HEIGHTxWIDTH and print every attention layer's "
            "shapes: a summary table, how the image size becomes tokens, and the stage-by-stage "
            "journey of the chosen layers (default: the first cross-attention layer)."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="sd15",
        metavar="NAME|PATH",
        help="sd15, sd21, sdxl, sd3, flux, pixart, tiny, reference, a preset's text encoder "
        "(sdxl:text_encoder_2), or a local diffusers model folder (default: sd15)",
    )
    p.add_argument("--height", type=_positive_int, default=None,
                   help="image height (default: the model's own: 512 sd15, 768 sd21, 1024 sdxl, "
                   "sd3, flux, pixart)")
    p.add_argument("--width", type=_positive_int, default=None,
                   help="image width (default: the model's own)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size (1)")
    p.add_argument(
        "--device",
        type=_device,
        default="meta",
        help="meta (shapes only, no weights: default), cpu or cuda",
    )
    p.add_argument(
        "--processor",
        choices=PROCESSORS,
        default=None,
        help="diffusers attention processor to set (default: the model's own)",
    )
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="(float32)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--layer",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="layers to show the journey of: full name, short name (down.0.0.attn2) or part",
    )
    which.add_argument("--all", action="store_true", help="show the journey of every layer")
    p.add_argument(
        "--kind", choices=KINDS, default=None,
        help="only cross-, joint- (SD3, Flux) or self-attention layers",
    )
    p.add_argument(
        "--json", metavar="FILE", help="also write the journey as JSON ('-': to stdout only)"
    )
    p.add_argument(
        "--markdown", metavar="FILE", help="also write the report as Markdown ('-': stdout only)"
    )
    p.add_argument(
        "--exit-zero",
        action="store_true",
        help="exit 0 even when a runtime check fails (default: exit 1, so CI can gate on it)",
    )
    p.set_defaults(func=run_trace)


def run_trace(args: argparse.Namespace) -> int:
    """``shapetrace trace``: check, trace, print the report, write the files asked for."""
    from shapetrace._trace_command import run_trace as run

    return run(args)


def _register_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (name == missing or name.startswith(missing + ".")):
                continue  # that part of shapetrace is not there: no subcommand
            raise
        module.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """The ``shapetrace`` parser with ``trace`` and every registered subcommand.

    >>> build_parser().parse_args(["trace", "--height", "256"]).height
    256
    """
    parser = argparse.ArgumentParser(
        prog="shapetrace",
        description="See the tensor dimensions inside Stable Diffusion's attention.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_trace(subparsers)
    _register_subcommands(subparsers)
    return parser


def _version() -> str:
    """'shapetrace 0.1.0 (torch 2.13.0+cpu, diffusers 0.42.1, Python 3.11.7)', no imports."""
    from importlib import metadata

    from shapetrace import __version__

    found = []
    for name in ("torch", "diffusers"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    python = ".".join(map(str, sys.version_info[:3]))
    return f"shapetrace {__version__} ({', '.join(found)}, Python {python})"


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def one_line(error: BaseException) -> str:
    """The error's message on one line, each over-long word cut in the middle.

    >>> one_line(ValueError("bad\\n value " + "x" * 500))[:24]
    'bad value xxxxxxxxxxxxxx'
    """
    words = str(error).split()
    for i, word in enumerate(words):
        if len(word) > _LONGEST_WORD:
            half = _LONGEST_WORD // 2 - 2
            words[i] = f"{word[:half]}…{word[-half:]} ({len(word):,} characters)"
    return " ".join(words) or type(error).__name__


def _quiet_libraries() -> None:
    """Silence third-party progress bars and advice that are not the user's business
    (transformers' "Loading weights" bar, diffusers' notes), for the commands only."""
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "diffusers"):  # already imported: tell them directly
        library = sys.modules.get(name)
        if library is not None:
            library.utils.logging.set_verbosity_error()
            library.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0 done, 1 a check failed, 2 bad
    input, 130 interrupted.

    A :class:`~shapetrace.errors.ShapeTraceError` becomes one line on stderr,
    ``shapetrace: error: <message>``, like argparse's own usage errors; Ctrl-C one line,
    ``shapetrace: interrupted``. Neither prints a traceback.

    >>> main(["trace", "--height", "256", "--width", "256"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_code(exc.code)
    _quiet_libraries()
    stopped: list[int] = []
    previous = _on_terminate(stopped)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted; nothing was written", file=sys.stderr)
        return 128 + stopped[0] if stopped else EXIT_INTERRUPTED
    except ShapeTraceError as exc:
        print(f"{parser.prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, CheckFailedError) else EXIT_USAGE
    except BrokenPipeError:  # `shapetrace trace --json - | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # the model itself failed inside a traced layer: one line, exit 1
        notes = [n for n in getattr(exc, "__notes__", []) if n.startswith("shapetrace:")]
        if not notes:
            raise  # not inside a traced layer: a bug, with its traceback
        where = notes[0].removeprefix("shapetrace: ").split(" after ")[0]
        print(f"{parser.prog}: error: the model failed {where}: {type(exc).__name__}: "
              f"{one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0 if status is None else int(status)


def _on_terminate(stopped: list[int]) -> Any:
    """Make SIGTERM (``kill``, a CI timeout) stop a command the way Ctrl-C does, so its
    temporary outputs are removed; the previous handler is returned to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)
