"""``trace_model``: build a model, run one forward at the asked size, return its journey.

It sits above ``shapetrace.tracing`` and ``shapetrace.models``: tracing knows nothing of the
presets.
"""

from __future__ import annotations

import torch

from shapetrace.errors import InputShapeError
from shapetrace.journey import Journey
from shapetrace.tracing import trace

__all__ = ["PROCESSORS", "set_processor", "trace_model"]

PROCESSORS = ("AttnProcessor", "AttnProcessor2_0")


def set_processor(module: torch.nn.Module, name: str) -> None:
    """Set one of diffusers' processors on every diffusers ``Attention`` in ``module``."""
    from diffusers.models import attention_processor as ap

    if name not in PROCESSORS:
        raise InputShapeError(f"unknown processor {name!r}; choose one of {', '.join(PROCESSORS)}")
    setter = getattr(module, "set_attn_processor", None)
    if not callable(setter):
        raise InputShapeError(
            f"{type(module).__name__} has no diffusers attention processors to set; "
            "--processor applies to UNet models (sd15, tiny or a local folder)"
        )
    setter(getattr(ap, name)())


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise InputShapeError(
            "device 'cuda' was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}); use --device meta or cpu, or install a CUDA build"
        )
    if device not in ("meta", "cpu", "cuda") and not device.startswith("cuda:"):
        raise InputShapeError(f"unknown device {device!r}; use meta, cpu or cuda")


def trace_model(
    model: str = "sd15",
    *,
    height: int = 512,
    width: int = 512,
    batch: int = 1,
    device: str = "meta",
    processor: str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    monitors: bool = True,
) -> Journey:
    """The journey of every attention call of one forward of ``model`` at height x width.

    >>> journey = trace_model("sd15", height=256, width=256)           # doctest: +SKIP
    >>> journey.cross[0].shape("feature_map"), journey.cross[0].shape("scores")
    ((1, 320, 32, 32), (1, 8, 1024, 77))
    """
    from shapetrace.models import build_model, check_size

    check_size(height, width, batch)
    _check_device(device)
    built = build_model(model, device=device, dtype=dtype, seed=seed)
    if processor is not None:
        set_processor(built.module, processor)
    args, kwargs = built.inputs(height, width, batch, seed=seed)
    with torch.no_grad(), trace(built.module, monitors=monitors) as journey:
        built.module(*args, **kwargs)
    journey.model = built.name
    journey.height, journey.width, journey.batch = height, width, batch
    journey.device = device
    factor = built.vae_scale_factor
    journey.meta.update(
        {
            "dtype": str(dtype).replace("torch.", ""),
            "family": built.family,
            "vae_scale_factor": factor,
            "latent": [height // factor, width // factor],
        }
    )
    if processor is not None:
        journey.meta["processor"] = processor
    return journey
