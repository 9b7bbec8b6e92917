"""The ``shapetrace maps`` command itself: geometry on meta, memory estimate, the run."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from shapetrace.errors import InputShapeError, NoAttentionLayersError
from shapetrace.maps.aggregation import nearest_resolution
from shapetrace.maps.memory import estimate_memory, format_bytes
from shapetrace.maps.store import PLACES, AttentionStore, Resolution

__all__ = ["run"]


def _meta_layers(meta: Any, height: int, width: int, batch: int) -> list[Any]:
    """One forward of a ``meta`` model: every attention call with its resolution, at no cost."""
    from shapetrace.tracing import trace

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

    from shapetrace.maps.aggregation import aggregate
    from shapetrace.maps.export import write_outputs
    from shapetrace.maps.overlay import prepare_overlay
    from shapetrace.maps.pipeline import build_chain, denoise
    from shapetrace.maps.text import tokenize
    from shapetrace.models import build_model

    quiet = bool(getattr(args, "quiet", False))
    out = Console()
    if args.steps < 1:
        raise InputShapeError(f"--steps must be >= 1, got {args.steps}")
    tokens = tokenize(args.prompt)
    if tokens.truncated and not getattr(args, "truncate", False):
        cut = next((i for i, t in enumerate(tokens.word_tokens) if not t), len(tokens.words) - 1)
        raise InputShapeError(
            f"the prompt has {len(tokens.words)} words and does not fit SD 1.5's 77-token "
            f"window (75 text tokens between start and end of text): from word {cut + 1} "
            f"({tokens.words[cut]!r}) on it would be cut. Shorten the prompt, or pass "
            "--truncate to cut it as diffusers' pipelines do."
        )
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
    vae = getattr(args, "vae", None)
    overlay = prepare_overlay(args.model, vae, result.latents, tokens, device=args.device)
    if overlay is not None:
        extra["overlay"] = overlay.files
    summary = write_outputs(
        args.out, maps, tokens, image_size=(height, width), settings=settings, extra=extra
    )
    if overlay is not None:
        overlay.write(args.out, maps)
        out.print(f"drew the maps over the image decoded by {overlay.vae} in overlay/")
    out.print(
        f"wrote {len(summary['files']['heatmaps'])} heat maps, grid.png, maps.safetensors "
        f"{tuple(maps.shape)} and summary.json to {args.out} "
        f"(stored {format_bytes(store.nbytes())}, {result.seconds:.1f} s)"
    )
    return 0
