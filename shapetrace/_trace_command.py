"""``shapetrace trace`` itself: every flag checked and every output reserved before the
trace, the report, the outputs renamed into place, and exit 1 when a runtime check failed.

On a real device the model is first traced on ``meta`` (no weights, no compute): that run
checks ``--layer``/``--kind`` against the real layer names and gives the memory and time the
real run needs, which is refused when the machine does not have it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from shapetrace._checks import blame, check_batch, check_size, show
from shapetrace._outputs import Outputs
from shapetrace.errors import ModelLoadError, OutputError, SettingError, ShapeTraceError

if TYPE_CHECKING:
    import torch

    from shapetrace._footprint import Estimate
    from shapetrace.journey import Journey

__all__ = ["run_trace"]

EXIT_FAILED_CHECK = 1


def _native(model: str) -> tuple[int, int]:
    """The size a preset (or a folder's config: ``sample_size`` x 8, Flux 1024) is made for;
    512x512 when neither says. A folder that cannot be read is refused later, by the loader."""
    import json
    from pathlib import Path

    from shapetrace.models._build import CLASS_FAMILY, folder_native
    from shapetrace.models.presets import PRESETS

    preset = PRESETS.get(model.partition(":")[0])
    if preset is not None:
        return preset.native
    for config in (
        Path(model) / "config.json",
        Path(model) / "unet" / "config.json",
        Path(model) / "transformer" / "config.json",
    ):
        try:
            values = json.loads(config.read_text())
            family = CLASS_FAMILY.get(values.get("_class_name"), "unet")
            return folder_native(values, family)
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return 512, 512


def _check_flags(args: argparse.Namespace) -> tuple[int, int, int]:
    """The checks that need no torch: sizes, batch, layers, stdout, processor and model."""
    from shapetrace.models.presets import PRESETS

    if args.height is None or args.width is None:
        native = _native(str(args.model))
        args.height = native[0] if args.height is None else args.height
        args.width = native[1] if args.width is None else args.width
    height, width = check_size(args.height, args.width, names=("--height", "--width"))
    batch = check_batch(args.batch, "--batch", tokens=(height // 8) * (width // 8))
    for pattern in args.layer or ():
        if not pattern.strip():
            raise SettingError(
                "--layer '' names no layer; give a full or short name or part of one, "
                "e.g. --layer down.0.0.attn2 (or --all)"
            )
    if args.json == "-" and args.markdown == "-":
        raise OutputError("--json - and --markdown - both want stdout; give one a FILE")
    preset = PRESETS.get(args.model)
    if args.processor and preset is not None and preset.family not in ("unet", "pixart"):
        runs = "joint attention with its own processors" if preset.family in ("sd3", "flux") \
            else "none"
        raise SettingError(
            f"--processor {args.processor} sets diffusers' plain attention processors, but "
            f"--model {preset.name} is the {preset.family} model, which runs {runs}; use a UNet "
            "or PixArt model, or leave --processor out"
        )
    return height, width, batch


def _choose(journey: Journey, args: argparse.Namespace) -> list[Any]:
    """The layers whose journeys to show, with --layer/--kind named when none fit."""
    from shapetrace.report import choose_layers

    flags = " ".join(
        [*(f"--layer {show(p, 60)}" for p in args.layer or ())]
        + ([f"--kind {args.kind}"] if args.kind else [])
    )
    with blame(flags, ShapeTraceError):
        return choose_layers(journey, args.layer or (), every=args.all, kind=args.kind)


def _preflight(
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    size: tuple[int, int, int],
) -> Estimate:
    """Trace on meta: check the layer flags, estimate memory and time, refuse what won't fit."""
    import torch

    from shapetrace._checks import check_fits
    from shapetrace._footprint import (
        Estimate,
        activation_bytes,
        available_memory,
        count_forward,
        estimate_seconds,
        weight_bytes,
    )
    from shapetrace.models import build_model
    from shapetrace.models.loading import check_folder
    from shapetrace.run import set_processor
    from shapetrace.tracing import trace

    height, width, batch = size
    with blame(f"--model {show(args.model, 60)}", ModelLoadError):
        meta = build_model(args.model, device="meta")
        if meta.source is not None:  # its weights too, before a word about the run
            check_folder(meta.source)
    if args.processor:
        set_processor(meta.module, args.processor, family=meta.family)
    inputs, kwargs = meta.inputs(height, width, batch)
    grids = meta.grids(height, width)
    with count_forward() as cost, trace(meta.module, monitors=False, grids=grids) as journey:
        meta.module(*inputs, **kwargs)
    _choose(journey, args)
    scale = torch.empty((), dtype=dtype).element_size() / 4  # the meta pass ran in float32
    estimate = Estimate(
        weights=weight_bytes(meta.module, dtype),
        activations=activation_bytes(cost, scale=scale),
        seconds=estimate_seconds(cost, device, calls=len(journey.layers)),
    )
    check_fits(
        estimate.total,
        available_memory(device),
        what=f"--model {show(args.model, 60)} at {height}x{width} with --batch {batch} on {device}",
        fix="use a smaller --batch, --height or --width, or --device meta for shapes only",
    )
    return estimate


def run_trace(args: argparse.Namespace) -> int:
    """Check, reserve the outputs, trace, report, write; 1 when a runtime check failed."""
    size = _check_flags(args)
    with Outputs() as outputs:
        json_file = outputs.file(args.json, "--json") if args.json not in (None, "-") else None
        md_file = (
            outputs.file(args.markdown, "--markdown") if args.markdown not in (None, "-") else None
        )
        from rich.console import Console

        import shapetrace
        from shapetrace._checks import check_device, check_dtype
        from shapetrace.report import print_report, to_markdown

        device = check_device(args.device, "--device")
        dtype = check_dtype(args.dtype, "--dtype", allow=("float32", "float16", "bfloat16"))
        if device.type != "meta":
            estimate = _preflight(args, device, dtype, size)
            _say(
                f"tracing {show(args.model, 60)} on {device} needs {estimate.memory_text()}; "
                f"the forward: {estimate.time_text()}"
            )
        with blame(f"--model {show(args.model, 60)}", ModelLoadError):
            journey = shapetrace.trace_model(
                args.model,
                height=size[0],
                width=size[1],
                batch=size[2],
                device=str(device),
                processor=args.processor,
                dtype=dtype,
            )
        summary = journey.layers if args.kind is None else journey.select(kind=args.kind)
        chosen = _choose(journey, args)
        if args.json == "-":
            sys.stdout.write(journey.to_json() + "\n")
        elif args.markdown == "-":
            sys.stdout.write(to_markdown(journey, chosen, summary=summary))
        else:
            print_report(journey, chosen, summary=summary, console=Console())
        if json_file is not None:
            json_file.write_text(journey.to_json() + "\n")
        if md_file is not None:
            md_file.write_text(to_markdown(journey, chosen, summary=summary))
        outputs.commit()
    for pending, what in ((json_file, "JSON journey"), (md_file, "Markdown report")):
        if pending is not None:
            _say(f"wrote the {what} to {pending.target}")
    return _verdict(journey, report_only=args.exit_zero)


def _verdict(journey: Journey, *, report_only: bool) -> int:
    """0, or 1 with one line when a runtime check failed (unless only reporting)."""
    failed = journey.violations
    if not failed:
        return 0
    layers = list(dict.fromkeys(layer.name for layer, _ in failed))
    names = sorted({check.name for _, check in failed})
    line = (
        f"{len(failed)} runtime check(s) failed in {len(layers)} layer(s) "
        f"({', '.join(names)}; first in {layers[0]})"
    )
    if report_only:
        _say(f"{line}; exit 0 because of --exit-zero")
        return 0
    _say(f"{line}; exit {EXIT_FAILED_CHECK} (pass --exit-zero to only report)")
    return EXIT_FAILED_CHECK


def _say(line: str) -> None:
    print(f"shapetrace: {line}", file=sys.stderr)
