"""The ``shapetrace maps`` command itself: check and plan (see ``_preflight``), reserve the
output folder, say what the run will cost, denoise with capture, check the maps, write them
into the reserved folder and swap it in as a whole.

An error or Ctrl-C at any point leaves nothing behind: the folder is filled under a temporary
name beside ``--out`` and an earlier run in ``--out`` is replaced only when the new one is
complete.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from rich.console import Console
from rich.text import Text

from shapetrace._checks import format_bytes, show
from shapetrace._footprint import available_memory
from shapetrace._outputs import Outputs, writing
from shapetrace.errors import CheckFailedError
from shapetrace.maps._preflight import MapsPlan, plan_run

__all__ = ["run"]


def _say_plan(console: Console, plan: MapsPlan, args: argparse.Namespace) -> None:
    """The run's size, cost in memory and time, and capture policy, before it starts."""
    from shapetrace.maps.memory import estimate_memory

    batch = f"batch {plan.batch}" + (" (uncond + cond)" if plan.batch == 2 else "")
    console.print(
        Text.assemble(
            ("maps ", "bold"),
            f"{plan.meta.name} {plan.height}x{plan.width} (latent {plan.latent[0]}x"
            f"{plan.latent[1]}), {plan.steps} steps = {plan.forwards} UNet forwards of {batch}, "
            f"guidance {plan.guidance:g}, map {plan.res[0]}x{plan.res[1]}",
        )
    )
    have = available_memory(plan.device)
    room = f" of {format_bytes(have)} available" if have is not None else ""
    timing = plan.estimate.time_text()
    console.print(
        f"needs {plan.estimate.memory_text()}{room}"
        + (f"; {timing} on {plan.device} (rough)" if timing else ""),
        markup=False,
        highlight=False,
    )
    est = estimate_memory(plan.store, plan.layers, batch=plan.batch)
    console.print(f"memory estimate: {est}", markup=False, highlight=False)
    if plan.tokens.truncated:
        console.print(Text("prompt truncated to 77 tokens", style="yellow"))


def _check_maps(maps: torch.Tensor, plan: MapsPlan) -> None:
    """Refuse to write maps that are not finite (NaN weights, overflowing latents)."""
    if not bool(torch.isfinite(maps).all()):
        bad = int((~torch.isfinite(maps)).sum())
        raise CheckFailedError(
            f"the maps are not finite ({bad:,} of {maps.numel():,} values are NaN or inf), so "
            f"nothing was written; the model's weights or outputs hold NaN/inf (model "
            f"{show(plan.meta.name)}, guidance {plan.guidance:g})"
        )


def run(args: argparse.Namespace) -> int:
    """Plan, denoise with capture, aggregate and write; returns the exit code."""
    from shapetrace.maps.aggregation import aggregate
    from shapetrace.maps.export import foreign_files, write_outputs, written_files
    from shapetrace.maps.overlay import prepare_overlay
    from shapetrace.maps.pipeline import build_chain, denoise

    console = Console()
    plan = plan_run(args)
    with Outputs() as outputs:
        folder = outputs.folder(args.out, "--out", foreign=foreign_files)
        _say_plan(console, plan, args)
        chain = build_chain(
            args.model, text_encoder=args.text_encoder, device=plan.device, seed=plan.seed
        )
        start = time.perf_counter()
        result = denoise(
            chain,
            plan.tokens,
            steps=plan.steps,
            height=plan.height,
            width=plan.width,
            guidance=plan.guidance,
            seed=plan.seed,
            store=plan.store,
            progress=not getattr(args, "quiet", False),
        )
        maps = aggregate(plan.store, plan.res, ("up", "down"), True, select=0)
        _check_maps(maps, plan)
        overlay = prepare_overlay(
            args.model, getattr(args, "vae", None), result.latents, plan.tokens,
            device=plan.device,
        )
        with writing("--out", folder.target):
            drawn = overlay.write(folder.path, maps) if overlay is not None else None
            summary = write_outputs(
                folder.path,
                maps,
                plan.tokens,
                image_size=(plan.height, plan.width),
                settings=_settings(args, plan, chain),
                extra=_extra(plan, time.perf_counter() - start, overlay, drawn),
                more_files=None if drawn is None else {"overlay": _drawn_files(drawn)},
            )
        outputs.commit()
    if overlay is not None:
        console.print(f"drew the maps over the image decoded by {overlay.vae} (overlay/)",
                      markup=False, highlight=False)
    console.print(
        f"wrote {written_files(summary)} to {folder.target} (stored "
        f"{format_bytes(plan.store.nbytes())}, {result.seconds:.1f} s)",
        markup=False,
        highlight=False,
    )
    return 0


def _settings(args: argparse.Namespace, plan: MapsPlan, chain: Any) -> dict[str, Any]:
    return {
        "model": chain.name,
        "text_encoder": chain.text_source,
        "steps": plan.steps,
        "height": plan.height,
        "width": plan.width,
        "latent": list(plan.latent),
        "guidance": plan.guidance,
        "seed": plan.seed,
        "res": list(plan.res),
        "from_where": ["up", "down"],
        "scheduler": chain.scheduler_config.get("_class_name", "PNDMScheduler"),
        "weights": getattr(chain.unet, "weights", ""),
        "device": str(plan.device),
    }


def _drawn_files(drawn: dict[str, Any]) -> dict[str, Any]:
    """The overlay's files, relative to the output folder."""
    return {key: drawn[key] for key in ("image", "overlays", "grid")}


def _extra(
    plan: MapsPlan, seconds: float, overlay: Any = None, drawn: dict[str, Any] | None = None
) -> dict[str, Any]:
    from shapetrace.maps.memory import estimate_memory

    est = estimate_memory(plan.store, plan.layers, batch=plan.batch)
    store = plan.store
    more = {} if drawn is None else {"overlay": {"vae": str(overlay.vae), **_drawn_files(drawn)}}
    return {
        **more,
        "rows": [str(r) for r in store.kept_rows],
        "layers": sorted({name for e in store.entries.values() for name in e.layers}),
        "memory": {
            "estimate_bytes": est.running,
            "scratch_bytes": est.scratch,
            "stored_bytes": store.nbytes(),
        },
        "seconds": round(seconds, 3),
    }
