"""``shapetrace maps``: per-token cross-attention heat maps from a real prompt-to-UNet run.

    shapetrace maps --prompt "a cat sitting on a mat" --model tiny --steps 3 --out maps/

Before a weight is loaded every flag is checked (``maps._preflight``) and the model is traced
once on ``meta`` (no weights, no compute) to learn every layer's resolution; the command then
prints the UNet forwards it will run, the memory they need against what the machine has, a
rough time, and what the capture will hold. The output folder is filled under a temporary name
and swapped in whole (``maps._command``).
"""

from __future__ import annotations

import argparse
from typing import Any

Resolution = tuple[int, int]

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
    p.add_argument("--model", default="sd15", help="sd15, tiny, or a local diffusers UNet folder")
    p.add_argument(
        "--text-encoder",
        default=None,
        metavar="DIR",
        help="local CLIP text encoder folder (config.json + *.safetensors)",
    )
    p.add_argument(
        "--vae",
        default=None,
        metavar="DIR",
        help="local VAE folder to draw the maps over the decoded image (default: the model "
        "folder's vae/, if it has one)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=10,
        help="denoising steps (default 10; SD's PNDM makes 1 to 999)",
    )
    p.add_argument("--height", type=int, default=None, help="image height (default: model's)")
    p.add_argument("--width", type=int, default=None, help="image width (default: model's)")
    p.add_argument(
        "--guidance", type=float, default=7.5, help="CFG scale, 0 to 1000; <= 1 turns CFG off"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights and noise, >= 0")
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
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder, written as a whole (an earlier run there is replaced)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut a prompt longer than 77 tokens instead of refusing it",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``maps`` command (torch, diffusers and the model load only now)."""
    from shapetrace.maps._command import run as run_maps

    return run_maps(args)
