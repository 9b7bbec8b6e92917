"""``shapetrace maps``: per-token cross-attention heat maps from a real prompt-to-UNet run.

    shapetrace maps --prompt "a cat sitting on a mat" --model tiny --steps 3 --out maps/

Before the run it traces the model once on ``meta`` (no weights, no compute) to learn every
layer's resolution, picks the map resolution, and prints what the capture policy will cost.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from shapetrace.errors import InputShapeError, NoAttentionLayersError
from shapetrace.maps.aggregate import nearest_resolution
from shapetrace.maps.memory import estimate_memory, format_bytes
from shapetrace.maps.store import PLACES, AttentionStore, Resolution

__all__ = ["parse_res", "register", "run"]


def parse_res(text: str) -> Resolution:
    """'16' -> (16, 16); '12x16' -> (12, 16)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--res takes SIDE or HxW, e.g. 16 or 12x16; got {text!r}")
    return (parts[0], parts[1])


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``maps`` subcommand to the CLI's subparsers."""
    p = subparsers.add_parser(
        "maps",
        help="per-token cross-attention heat maps, prompt to UNet",
        description=(
            "Run tokenizer, CLIP text encoder and UNet for N steps under classifier-free "
            "guidance, capture cross-attention per token and write heat maps. With random "
            "weights (the default) the maps show the mechanics, not semantics."
        ),
    )
    p.add_argument("--prompt", required=True, help="the text prompt")
    p.add_argument("--model", default="sd15", help="sd15, tiny, or a local diffusers folder")
    p.add_argument(
        "--text-encoder",
        default=None,
        metavar="DIR",
        help="local CLIP text encoder folder (config.json + *.safetensors)",
    )
    p.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    p.add_argument("--height", type=int, default=None, help="image height (default: model's)")
    p.add_argument("--width", type=int, default=None, help="image width (default: model's)")
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale; <= 1 turns CFG off")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and noise")
    p.add_argument(
        "--res",
        type=parse_res,
        default=None,
        help="map resolution SIDE or HxW (default: the level nearest latent/4)",
    )
    p.add_argument(
        "--all-res",
        action="store_true",
        help="capture every resolution, not only --res (costs more memory)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _meta_layers(meta: Any, height: int, width: int, batch: int) -> list[Any]:
    """One forward of a ``meta`` model: every attention call with its resolution, at no cost."""
    from shapetrace.trace import trace

    args, kwargs = meta.inputs(height, width, batch)
    with torch.no_grad(), trace(meta.module, monitors=False) as journey:
        meta.module(*args, **kwargs)
    return list(journey.layers)


def _pick_res(layers: list[Any], wanted: Resolution | None, latent: tuple[int, int]) -> Resolution:
    """--res if some up/down cross layer has it, else the level nearest latent/4."""
    have = sorted(
        {
            tuple(x.resolution)
            for x in layers
            if x.kind == "cross" and x.place in ("up", "down") and x.resolution
        },
        reverse=True,
    )
    if not have:
        raise NoAttentionLayersError("the model has no cross-attention layer in down or up blocks")
    if wanted is not None:
        if wanted not in have:
            sizes = ", ".join(f"{h}x{w}" for h, w in have)
            raise InputShapeError(
                f"--res {wanted[0]}x{wanted[1]}: no cross-attention layer at that size for "
                f"latent {latent[0]}x{latent[1]}; the layers have {sizes}"
            )
        return wanted
    return nearest_resolution(have, latent)


def run(args: argparse.Namespace) -> int:
    """Build, estimate, denoise with capture, aggregate and write; returns the exit code."""
    from rich.console import Console

    from shapetrace.maps.aggregate import aggregate
    from shapetrace.maps.export import write_outputs
    from shapetrace.maps.pipeline import build_chain, denoise
    from shapetrace.maps.text import tokenize
    from shapetrace.models import build_model

    quiet = bool(getattr(args, "quiet", False))
    out = Console()
    if args.steps < 1:
        raise InputShapeError(f"--steps must be >= 1, got {args.steps}")
    tokens = tokenize(args.prompt)
    meta = build_model(args.model, weights="meta", device="meta")  # shapes first, no weights
    if meta.family != "unet":
        raise InputShapeError(
            f"maps runs a diffusers UNet under a denoising loop; {meta.name!r} is a "
            f"{meta.family} model. Use --model sd15, tiny or a local diffusers folder"
        )
    side = int(meta.config.get("sample_size", 64)) * meta.vae_scale_factor
    height, width = args.height or side, args.width or side
    latent = meta.latent_size(height, width)
    cfg = args.guidance > 1.0
    batch = 2 if cfg else 1
    layers = _meta_layers(meta, height, width, batch)
    res = _pick_res(layers, args.res, latent)
    store = AttentionStore.for_batch(
        1, guidance=cfg, places=PLACES, resolutions=None if args.all_res else [res]
    )
    est = estimate_memory(store, layers, batch=batch)
    out.print(
        f"[bold]maps[/] {meta.name} {height}x{width} (latent {latent[0]}x{latent[1]}), "
        f"{args.steps} steps, guidance {args.guidance}, map {res[0]}x{res[1]}"
    )
    out.print(f"memory estimate: {est}")
    if tokens.truncated:
        out.print("[yellow]prompt truncated to 77 tokens[/]")
    chain = build_chain(
        args.model, text_encoder=args.text_encoder, device=args.device, seed=args.seed
    )
    start = time.perf_counter()
    result = denoise(
        chain,
        tokens,
        steps=args.steps,
        height=height,
        width=width,
        guidance=args.guidance,
        seed=args.seed,
        store=store,
        progress=not quiet,
    )
    maps = aggregate(store, res, ("up", "down"), True, select=0)
    settings = {
        "model": chain.name,
        "text_encoder": chain.text_source,
        "steps": args.steps,
        "height": height,
        "width": width,
        "latent": list(latent),
        "guidance": args.guidance,
        "seed": args.seed,
        "res": list(res),
        "from_where": ["up", "down"],
        "scheduler": chain.scheduler_config.get("_class_name", "PNDMScheduler"),
        "weights": getattr(chain.unet, "weights", ""),
        "device": str(args.device),
    }
    extra = {
        "rows": [str(r) for r in store.kept_rows],
        "layers": sorted({name for e in store.entries.values() for name in e.layers}),
        "memory": {
            "estimate_bytes": est.running,
            "scratch_bytes": est.scratch,
            "stored_bytes": store.nbytes(),
        },
        "seconds": round(time.perf_counter() - start, 3),
    }
    summary = write_outputs(
        args.out, maps, tokens, image_size=(height, width), settings=settings, extra=extra
    )
    out.print(
        f"wrote {len(summary['files']['heatmaps'])} heat maps, grid.png, maps.safetensors "
        f"{tuple(maps.shape)} and summary.json to {args.out} "
        f"(stored {format_bytes(store.nbytes())}, {result.seconds:.1f} s)"
    )
    return 0
