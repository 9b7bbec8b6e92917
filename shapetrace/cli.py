"""The ``shapetrace`` command line.

``shapetrace trace`` builds a model (SD 1.5 on the meta device by default: no weights, no
compute), runs one forward at the size you ask and prints each attention layer's dimension
journey::

    $ shapetrace trace --height 256 --width 256            # seed 002's table, for real
    $ shapetrace trace --layer mid --kind cross --json journey.json
    $ shapetrace trace --model tiny --device cpu --all --markdown report.md

Other parts of shapetrace add subcommands: each module in ``_SUBCOMMANDS`` that can be imported
gets ``register(subparsers)`` called, adds its parser and sets ``func``. Heavy imports (torch,
diffusers) happen inside the commands, so ``shapetrace --help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from shapetrace.errors import ShapeTraceError

__all__ = ["build_parser", "main"]

#: Modules that add subcommands with ``register(subparsers)``; skipped when not installed.
_SUBCOMMANDS: tuple[str, ...] = ("shapetrace.maps.cli",)

PROCESSORS = ("AttnProcessor", "AttnProcessor2_0")
DTYPES = ("float32", "float16", "bfloat16")
KINDS = ("cross", "self")
EXIT_USAGE = 2

_EXAMPLES = """\
examples:
  shapetrace trace --height 256 --width 256     seed 002's (1, 1024, 320) journey
  shapetrace trace --height 512 --width 768     non-square: first grid 64x96, 6144 tokens
  shapetrace trace --layer up.3 --kind cross    cross layers of up_blocks.3
  shapetrace trace --all --json journey.json    every layer, and the JSON journey
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
    """argparse type: meta, cpu, cuda or cuda:N."""
    if text in ("meta", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected meta, cpu, cuda or cuda:N, got {text!r}")


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
        help="sd15, tiny, reference, or a local diffusers UNet folder (default: sd15)",
    )
    p.add_argument("--height", type=_positive_int, default=512, help="image height (512)")
    p.add_argument("--width", type=_positive_int, default=512, help="image width (512)")
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
        "--kind", choices=KINDS, default=None, help="only cross- or self-attention layers"
    )
    p.add_argument(
        "--json", metavar="FILE", help="also write the journey as JSON ('-': to stdout only)"
    )
    p.add_argument(
        "--markdown", metavar="FILE", help="also write the report as Markdown ('-': stdout only)"
    )
    p.set_defaults(func=run_trace)


def _write(path: str, text: str, what: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ShapeTraceError(f"cannot write the {what} to {path}: {exc.strerror or exc}") from exc
    print(f"shapetrace: wrote the {what} to {path}", file=sys.stderr)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse before tracing when an output cannot be written, not after."""
    if args.json == "-" and args.markdown == "-":
        raise ShapeTraceError("--json - and --markdown - both want stdout; give one a FILE")
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path and path != "-":
            parent = Path(path).parent
            if not parent.is_dir():
                raise ShapeTraceError(f"{flag} {path}: folder {parent} does not exist")


def run_trace(args: argparse.Namespace) -> int:
    """``shapetrace trace``: trace, print the report, write the files asked for."""
    _check_outputs(args)
    import torch
    from rich.console import Console

    import shapetrace
    from shapetrace.report import choose_layers, print_report, to_markdown

    journey = shapetrace.trace_model(
        args.model,
        height=args.height,
        width=args.width,
        batch=args.batch,
        device=args.device,
        processor=args.processor,
        dtype=getattr(torch, args.dtype),
    )
    summary = journey.layers if args.kind is None else journey.select(kind=args.kind)
    chosen = choose_layers(journey, args.layer or (), every=args.all, kind=args.kind)
    if args.json == "-":
        sys.stdout.write(journey.to_json() + "\n")
    elif args.markdown == "-":
        sys.stdout.write(to_markdown(journey, chosen, summary=summary))
    else:
        print_report(journey, chosen, summary=summary, console=Console())
    if args.json and args.json != "-":
        _write(args.json, journey.to_json() + "\n", "JSON journey")
    if args.markdown and args.markdown != "-":
        _write(args.markdown, to_markdown(journey, chosen, summary=summary), "Markdown report")
    return 0


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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_trace(subparsers)
    _register_subcommands(subparsers)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input).

    A :class:`~shapetrace.errors.ShapeTraceError` becomes one line on stderr,
    ``shapetrace: error: <message>``, like argparse's own usage errors.

    >>> main(["trace", "--height", "256", "--width", "256"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_code(exc.code)
    try:
        status = args.func(args)
    except ShapeTraceError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0 if status is None else int(status)
