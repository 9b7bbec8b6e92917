"""The real chain, prompt to UNet: tokenizer, CLIP text encoder, scheduler, denoising loop.

Classifier-free guidance runs the UNet on the batch [uncond, cond] (the empty prompt first, as
diffusers does) and mixes noise = uncond + g * (cond - uncond). With a store, each step's
forward runs under ``store.capture`` (the tracer with the store as probe), and each step ends
with ``store.end_step()``; hooks come and go per step.

>>> chain = build_chain("tiny", seed=0)                           # doctest: +SKIP
>>> run = denoise(chain, "a cat sitting on a mat", steps=3, height=128, width=128,
...               store=AttentionStore.for_batch(1, guidance=True))  # doctest: +SKIP
>>> run.latents.shape                                              # doctest: +SKIP
torch.Size([1, 4, 16, 16])
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shapetrace.errors import InputShapeError, ModelLoadError
from shapetrace.maps.store import AttentionStore
from shapetrace.maps.text import PromptTokens, build_text_encoder, encode, load_text_encoder
from shapetrace.maps.text import tokenize as tokenize_prompt

__all__ = ["Chain", "MapsRun", "build_chain", "denoise", "make_scheduler"]


@dataclass
class Chain:
    """The models of one run: ``unet`` (a ``BuiltModel``), the CLIP ``text_encoder`` and the
    scheduler's config; ``text_source`` says where the encoder's weights came from."""

    unet: Any
    text_encoder: nn.Module
    scheduler_config: dict[str, Any]
    name: str
    text_source: str


@dataclass
class MapsRun:
    """What ``denoise`` did: the final latents (B, 4, h, w), the tokens, the timesteps, the
    first step's traced layers (one forward's journey) and the wall time."""

    latents: torch.Tensor
    tokens: PromptTokens
    timesteps: list[int]
    seconds: float
    layers: list[Any] = field(default_factory=list)


def make_scheduler(config: dict[str, Any]) -> Any:
    """A diffusers scheduler from its config (``_class_name`` picks the class, PNDM default)."""
    import diffusers

    name = config.get("_class_name", "PNDMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ModelLoadError(
            f"scheduler class {name!r} is not in diffusers {diffusers.__version__}"
        )
    return cls.from_config(config)


def build_chain(
    model: str | Path = "tiny",
    *,
    text_encoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Chain:
    """The UNet (``shapetrace.models.build_model``), a CLIP text encoder and a scheduler config.

    The text encoder is loaded from ``text_encoder`` (a folder), else from ``model/text_encoder``
    when ``model`` is a pipeline folder holding one, else built from the preset's config
    (SD 1.5's for folders with cross_attention_dim 768) with random weights seeded by ``seed``.
    """
    from shapetrace.models import build_model, scheduler_config

    built = build_model(model, device=device, seed=seed)
    folder = Path(model) if built.source is not None else None
    root = folder.parent if folder is not None and folder.name == "unet" else folder
    encoder: Any
    if text_encoder is not None:
        encoder, source = load_text_encoder(text_encoder, device=device), str(text_encoder)
    elif root is not None and (root / "text_encoder").is_dir():
        encoder, source = load_text_encoder(root, device=device), str(root / "text_encoder")
    else:
        preset = str(model) if built.source is None else _preset_for(built.context_dim)
        encoder = build_text_encoder(preset, seed=seed, device=device)
        source = f"random weights (seed {seed}, {preset} config)"
    width = int(encoder.config.hidden_size)
    if width != built.context_dim:
        raise ModelLoadError(
            f"text encoder hidden_size {width} does not match the UNet's cross_attention_dim "
            f"{built.context_dim}; pass --text-encoder with a matching CLIP text model"
        )
    sched_file = root / "scheduler" / "scheduler_config.json" if root is not None else None
    if sched_file is not None and sched_file.is_file():
        import json

        sched = json.loads(sched_file.read_text())
    else:
        sched = scheduler_config(str(model) if built.source is None else "sd15")
    return Chain(built, encoder, sched, built.name, source)


def _preset_for(context_dim: int) -> str:
    """A preset whose text encoder has this width, for a folder without a text encoder."""
    from shapetrace.models import PRESETS, text_encoder_config

    for name, preset in PRESETS.items():
        if preset.text_encoder and text_encoder_config(name)["hidden_size"] == context_dim:
            return name
    raise ModelLoadError(
        f"no packaged text encoder has width {context_dim}; pass --text-encoder FOLDER"
    )


def denoise(
    chain: Chain,
    prompt: str | PromptTokens,
    *,
    steps: int = 10,
    height: int = 512,
    width: int = 512,
    guidance: float = 7.5,
    seed: int = 0,
    store: AttentionStore | None = None,
    progress: bool = False,
) -> MapsRun:
    """Run the denoising loop for one prompt, capturing into ``store`` when given.

    The store's rows must match the UNet batch: ``AttentionStore.for_batch(1, guidance=g > 1)``.
    Returns a ``MapsRun``; latents (1, 4, height/8, width/8).
    """
    if steps < 1:
        raise InputShapeError(f"steps must be >= 1, got {steps}")
    tokens = prompt if isinstance(prompt, PromptTokens) else tokenize_prompt(prompt)
    unet = chain.unet
    h, w = unet.latent_size(height, width)
    cfg = guidance > 1.0
    device, dtype = unet.device, unet.dtype
    ids = torch.stack([tokenize_prompt("").ids, tokens.ids]) if cfg else tokens.ids[None]
    context = encode(chain.text_encoder, ids).to(device=device, dtype=dtype)  # (B, 77, D)
    scheduler = make_scheduler(chain.scheduler_config)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, unet.latent_channels, h, w, generator=gen, dtype=torch.float32)
    latents = (latents * scheduler.init_noise_sigma).to(device=device, dtype=dtype)
    timesteps = [int(t) for t in scheduler.timesteps]
    layers: list[Any] = []
    start = time.perf_counter()
    with _progress(progress, len(timesteps), chain.name) as advance, torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            batch = torch.cat([latents, latents]) if cfg else latents
            batch = scheduler.scale_model_input(batch, t)
            if store is None:
                noise = _forward(unet.module, batch, t, context)
            else:
                with store.capture(unet.module) as journey:
                    noise = _forward(unet.module, batch, t, context)
                store.end_step()
                if i == 0:
                    layers = list(journey.layers)
            if cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance * (cond - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            advance()
    return MapsRun(latents, tokens, timesteps, time.perf_counter() - start, layers)


def _forward(unet: nn.Module, x: torch.Tensor, t: Any, context: torch.Tensor) -> torch.Tensor:
    """One UNet forward: noise prediction (B, 4, h, w)."""
    out: torch.Tensor = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    return out


class _progress:
    """A rich progress bar over the steps (or nothing), as a context giving ``advance()``."""

    def __init__(self, show: bool, total: int, name: str) -> None:
        self.show, self.total, self.name = show, total, name
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self.bar.__enter__()
        from rich.markup import escape  # a model name is shown as text, never as markup

        task = self.bar.add_task(f"{escape(self.name)}: UNet forwards", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
