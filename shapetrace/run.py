"""``trace_model``: build a model, run one forward at the asked size, return its journey.

It sits above ``shapetrace.tracing`` and ``shapetrace.models``: tracing knows nothing of the
presets.
"""

from __future__ import annotations

import re

import torch

from shapetrace.errors import InputShapeError
from shapetrace.journey import Journey
from shapetrace.tracing import trace

__all__ = ["PROCESSORS", "set_processor", "trace_model"]

PROCESSORS = ("AttnProcessor", "AttnProcessor2_0")


def set_processor(module: torch.nn.Module, name: str, *, family: str = "unet") -> None:
    """Set one of diffusers' processors on every diffusers ``Attention`` in ``module``.

    They compute plain self and cross attention, so they fit UNets and PixArt; SD3's and
    Flux's joint attention needs the models' own processors.
    """
    from diffusers.models import attention_processor as ap

    if name not in PROCESSORS:
        raise InputShapeError(f"unknown processor {name!r}; choose one of {', '.join(PROCESSORS)}")
    setter = getattr(module, "set_attn_processor", None)
    if not callable(setter):
        raise InputShapeError(
            f"{type(module).__name__} has no diffusers attention processors to set; "
            "--processor applies to UNets and PixArt (sd15, sd21, sdxl, pixart, tiny, a folder)"
        )
    if family not in ("unet", "pixart"):
        raise InputShapeError(
            f"--processor {name} cannot be set on {type(module).__name__} ({family}): it "
            "computes plain attention; SD3 and Flux run joint attention with their own processors"
        )
    setter(getattr(ap, name)())


def _device(device: object) -> str:
    """A device as torch users pass it (a string or a torch.device), checked."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise InputShapeError(
            f"device {device!r} ({type(device).__name__}); pass 'meta', 'cpu', 'cuda' or a "
            "torch.device"
        )
    if device not in ("meta", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise InputShapeError(f"unknown device {device!r}; use meta, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputShapeError(
            f"device {device!r} was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}); use meta or cpu, or install a CUDA build"
        )
    return device


def _dtype(dtype: object) -> torch.dtype:
    """A floating dtype as a torch.dtype or its name ("float16", "torch.bfloat16", "half")."""
    if isinstance(dtype, str):
        found = getattr(torch, dtype.removeprefix("torch."), None)
        dtype = found if isinstance(found, torch.dtype) else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputShapeError(
            f"dtype {dtype!r} is not a floating torch dtype; use float32, float16 or bfloat16"
        )
    return dtype


def trace_model(
    model: str = "sd15",
    *,
    height: int | None = None,
    width: int | None = None,
    batch: int = 1,
    device: str | torch.device = "meta",
    processor: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
    monitors: bool = True,
) -> Journey:
    """The journey of every attention call of one forward of ``model`` at height x width
    (default: the model's native size: 512 for SD 1.5, 768 for SD 2.1, 1024 for SDXL, SD3,
    Flux and PixArt). ``model`` is a preset, ``"sdxl:text_encoder_2"`` for a preset's text
    encoder, or a local folder.

    >>> journey = trace_model("sd15", height=256, width=256)           # doctest: +SKIP
    >>> journey.cross[0].shape("feature_map"), journey.cross[0].shape("scores")
    ((1, 320, 32, 32), (1, 8, 1024, 77))
    """
    from shapetrace.models import build_model

    device = _device(device)
    dtype = _dtype(dtype)
    built = build_model(model, device=device, dtype=dtype, seed=seed)
    h, w = built.native
    height = h if height is None else height
    width = w if width is None else width
    built.check_size(height, width, batch)
    if processor is not None:
        set_processor(built.module, processor, family=built.family)
    args, kwargs = built.inputs(height, width, batch, seed=seed)
    grids = built.grids(height, width)
    with torch.no_grad(), trace(built.module, monitors=monitors, grids=grids) as journey:
        built.module(*args, **kwargs)
    journey.model = built.name
    journey.batch, journey.device = batch, device
    journey.meta.update({"dtype": str(dtype).replace("torch.", ""), "family": built.family})
    if built.family != "text":
        factor = built.vae_scale_factor
        journey.height, journey.width = height, width
        journey.meta.update(
            {
                "vae_scale_factor": factor,
                "latent": [height // factor, width // factor],
                "patch": built.patch,
                "token_grid": list(built.token_grid(height, width)),
            }
        )
    if processor is not None:
        journey.meta["processor"] = processor
    return journey
