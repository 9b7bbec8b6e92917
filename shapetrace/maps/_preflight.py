"""Everything ``shapetrace maps`` checks before it loads a weight: the flags, the model and
text encoder folders, the steps against the scheduler, the map resolution against the
layers, and the memory and time the run needs against what the machine has.

The model is traced once on ``meta`` (no weights, no compute): that forward gives every
layer's grid, the activations' peak and the FLOPs of one UNet forward.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shapetrace._checks import (
    blame,
    check_device,
    check_fits,
    check_int,
    check_number,
    check_prompt,
    check_seed,
    check_side,
    check_size,
    check_steps,
    shorten,
    show,
)
from shapetrace._footprint import (
    Estimate,
    activation_bytes,
    available_memory,
    count_forward,
    estimate_seconds,
    weight_bytes,
)
from shapetrace.errors import (
    InputShapeError,
    ModelLoadError,
    NoAttentionLayersError,
    SettingError,
)
from shapetrace.maps.store import PLACES, AttentionStore, Resolution
from shapetrace.maps.text import PromptTokens, tokenize

__all__ = ["MapsPlan", "plan_run"]

#: Guidance past this is no setting anyone runs; float32 latents overflow long before 1e38.
MAX_GUIDANCE = 1000.0


@dataclass
class MapsPlan:
    """A checked ``maps`` run: sizes, the meta model and its layers, the store, the costs."""

    tokens: PromptTokens
    device: torch.device
    steps: int
    guidance: float
    seed: int
    meta: Any
    height: int
    width: int
    latent: tuple[int, int]
    batch: int
    layers: list[Any]
    res: Resolution
    store: AttentionStore
    forwards: int
    estimate: Estimate


def _tokens(args: argparse.Namespace) -> PromptTokens:
    prompt = check_prompt(args.prompt, "--prompt")
    tokens = tokenize(prompt)
    if tokens.truncated and not getattr(args, "truncate", False):
        cut = next((i for i, t in enumerate(tokens.word_tokens) if not t), len(tokens.words) - 1)
        raise InputShapeError(
            f"--prompt has {len(tokens.words)} words and does not fit SD 1.5's 77-token "
            f"window (75 text tokens between start and end of text): from word {cut + 1} "
            f"({shorten(tokens.words[cut], 40)}) on it would be cut. Shorten the prompt, or pass "
            "--truncate to cut it as diffusers' pipelines do."
        )
    return tokens


def _folder_root(model: str, meta: Any) -> Path | None:
    """The pipeline folder (holding unet/, text_encoder/, scheduler/) of a folder model."""
    if meta.source is None:
        return None
    folder = Path(model).expanduser()
    return folder.parent if folder.name == "unet" else folder


def _scheduler_config(model: str, meta: Any) -> dict[str, Any]:
    """The scheduler config the run will use: the folder's own, else the preset's or SD 1.5's."""
    from shapetrace.models import scheduler_config

    root = _folder_root(model, meta)
    file = root / "scheduler" / "scheduler_config.json" if root is not None else None
    if file is not None and file.is_file():
        try:
            config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{file} is not valid JSON ({err}); restore it") from None
        return config
    return scheduler_config(model if meta.source is None else "sd15")


def _schedule(config: dict[str, Any], steps: int) -> int | None:
    """UNet forwards of ``steps`` steps (PNDM adds warm-up steps), or None when the scheduler
    cannot make ``steps`` distinct timesteps inside its training range."""
    from shapetrace.maps.pipeline import make_scheduler

    scheduler = make_scheduler(config)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    train = int(config.get("num_train_timesteps", 1000))
    if len(set(timesteps)) != steps or min(timesteps) < 0 or max(timesteps) >= train:
        return None
    return len(timesteps)


def _forwards(config: dict[str, Any], steps: int) -> int:
    """The UNet forwards ``--steps`` runs; SettingError naming the most steps the scheduler
    can make when it cannot make these (1000 steps of SD's PNDM would step past t=999)."""
    train = int(config.get("num_train_timesteps", 1000))
    steps = check_steps(steps, "--steps", train_steps=train)
    forwards = _schedule(config, steps)
    if forwards is None:
        most = next((n for n in range(steps - 1, 0, -1) if _schedule(config, n)), 1)
        name = config.get("_class_name", "PNDMScheduler")
        raise SettingError(
            f"--steps {steps}: {name} cannot make {steps} distinct steps within its {train} "
            f"training timesteps; use --steps {most} or fewer (SD runs 20 to 50)"
        )
    return forwards


def _text_encoder_folder(args: argparse.Namespace, meta: Any) -> Path | None:
    """The text encoder folder the run will load (checked), or None for random weights."""
    from shapetrace.models._config_checks import check_config

    if args.text_encoder is not None:
        given = Path(args.text_encoder).expanduser()
        folder = given / "text_encoder" if (given / "text_encoder").is_dir() else given
        flag = f"--text-encoder {show(args.text_encoder, 60)}"
    else:
        root = _folder_root(args.model, meta)
        if root is None or not (root / "text_encoder").is_dir():
            return None
        folder, flag = root / "text_encoder", f"--model {show(args.model, 60)}"
    file = folder / "config.json"
    if not file.is_file():
        raise ModelLoadError(
            f"{flag}: no config.json in {show(folder)}; give the folder of a CLIP "
            "text encoder (config.json + model.safetensors) or a pipeline folder holding "
            "text_encoder/"
        )
    with blame(flag, ModelLoadError):
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{file} is not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise ModelLoadError(f"{file} holds a {type(config).__name__}, not a JSON object")
        check_config(config, where=str(file), family="text_encoder")
        if config["hidden_size"] != meta.context_dim:
            raise ModelLoadError(
                f"the text encoder's hidden_size {config['hidden_size']} does not match the "
                f"UNet's cross_attention_dim {meta.context_dim}; give the text encoder that "
                "belongs to this UNet"
            )
        if not any(folder.glob("*.safetensors")):
            raise ModelLoadError(
                f"{show(folder)} holds no *.safetensors weights (pickle files are "
                "never loaded); convert the weights to safetensors first"
            )
    return folder


def _text_encoder_bytes(args: argparse.Namespace, meta: Any, folder: Path | None) -> int:
    """Weights of the text encoder the run will build, counted on meta."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from shapetrace.models import text_encoder_config

    if folder is not None:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    elif meta.source is None:
        config = text_encoder_config(args.model)
    else:  # a folder without one: the packaged encoder of the UNet's width, as build_chain does
        from shapetrace.models import PRESETS

        widths = {
            name: text_encoder_config(name)
            for name, preset in PRESETS.items()
            if preset.text_encoder
        }
        fits = [c for c in widths.values() if c["hidden_size"] == meta.context_dim]
        if not fits:
            raise ModelLoadError(
                f"--model {show(args.model, 60)} has no text_encoder/ and no packaged text "
                f"encoder has its width {meta.context_dim}; pass --text-encoder FOLDER"
            )
        config = fits[0]
    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        encoder = CLIPTextModel(CLIPTextConfig(**fields))
    return weight_bytes(encoder, torch.float32)


def _pick_res(layers: list[Any], wanted: Resolution | None, latent: tuple[int, int]) -> Resolution:
    """--res if some up/down cross layer has it, else the level nearest latent/4."""
    from shapetrace.maps.aggregation import nearest_resolution

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


def plan_run(args: argparse.Namespace) -> MapsPlan:
    """Check every flag and the model, trace it on meta, estimate; refuse what cannot run."""
    from shapetrace.maps.memory import estimate_memory
    from shapetrace.models import build_model
    from shapetrace.models.loading import check_folder
    from shapetrace.tracing import trace

    tokens = _tokens(args)
    steps = check_int(args.steps, "--steps", minimum=1, fix="SD runs 20 to 50 steps")
    guidance = check_number(
        args.guidance,
        "--guidance",
        minimum=0,
        maximum=MAX_GUIDANCE,
        fix="SD runs 5 to 15; 1 or less turns classifier-free guidance off",
    )
    seed = check_seed(args.seed, "--seed")
    device = check_device(args.device, "--device", allow=("cpu", "cuda"))  # values: not meta
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None:
            check_side(value, flag)
    with blame(f"--model {show(args.model, 60)}", ModelLoadError):
        meta = build_model(args.model, weights="meta", device="meta")  # shapes first, no weights
        if meta.source is not None:  # a folder's weights too (headers only)
            check_folder(meta.source)
    if meta.family != "unet":
        raise SettingError(
            f"--model {show(meta.name)} is the {meta.family} model; maps runs a diffusers "
            "UNet under a denoising loop: use --model sd15, tiny or a local diffusers UNet folder"
        )
    sched = _scheduler_config(args.model, meta)
    forwards = _forwards(sched, steps)
    text_folder = _text_encoder_folder(args, meta)
    side = int(meta.config.get("sample_size", 64)) * meta.vae_scale_factor
    height = side if args.height is None else args.height
    width = side if args.width is None else args.width
    height, width = check_size(height, width, names=("--height", "--width"))
    latent = meta.latent_size(height, width)
    cfg = guidance > 1.0
    batch = 2 if cfg else 1
    inputs, kwargs = meta.inputs(height, width, batch)
    with count_forward() as cost, trace(meta.module, monitors=False) as journey:
        meta.module(*inputs, **kwargs)
    layers = list(journey.layers)
    res = _pick_res(layers, args.res, latent)
    store = AttentionStore.for_batch(
        1, guidance=cfg, places=PLACES, resolutions=None if args.all_res else [res]
    )
    capture = estimate_memory(store, layers, batch=batch)
    seconds = estimate_seconds(cost, device, forwards=forwards, calls=len(layers))
    estimate = Estimate(
        weights=weight_bytes(meta.module, torch.float32)
        + _text_encoder_bytes(args, meta, text_folder),
        activations=activation_bytes(cost),
        capture=capture.running + capture.scratch,
        seconds=seconds,
    )
    check_fits(
        estimate.total,
        available_memory(device),
        what=f"maps with --model {show(args.model, 60)} at {height}x{width} on {device}",
        fix="use a smaller --height and --width, or --res instead of --all-res",
    )
    return MapsPlan(
        tokens, device, steps, guidance, seed, meta, height, width, latent, batch, layers, res,
        store, forwards, estimate,
    )  # fmt: skip
