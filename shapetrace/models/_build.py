"""Which class builds each family, and the facts a ``BuiltModel`` needs, read off its config.

| family | class                                   | context width         | patch          |
|--------|-----------------------------------------|-----------------------|----------------|
| unet   | diffusers UNet2DConditionModel          | cross_attention_dim   | 1              |
| sd3    | diffusers SD3Transformer2DModel         | joint_attention_dim   | patch_size (2) |
| flux   | diffusers FluxTransformer2DModel        | joint_attention_dim   | 2 (packed 2x2) |
| pixart | diffusers PixArtTransformer2DModel      | caption_channels      | patch_size (2) |
| text   | transformers CLIPTextModel(WithProjection) | hidden_size        | —              |
"""

from __future__ import annotations

from typing import Any

from torch import nn

from shapetrace.errors import ModelLoadError
from shapetrace.models.built import BuiltModel

__all__ = ["CLASS_FAMILY", "built_from", "denoiser_class", "folder_native", "text_factory"]

#: diffusers ``_class_name`` -> family. PixArt-alpha's published config still says
#: ``Transformer2DModel``; diffusers 0.42 builds it as ``PixArtTransformer2DModel``.
CLASS_FAMILY = {
    "UNet2DConditionModel": "unet",
    "SD3Transformer2DModel": "sd3",
    "FluxTransformer2DModel": "flux",
    "PixArtTransformer2DModel": "pixart",
    "Transformer2DModel": "pixart",
}


def denoiser_class(family: str) -> Any:
    """The diffusers class of a family, imported on first use (diffusers is slow to import)."""
    import diffusers

    names = {
        "unet": "UNet2DConditionModel",
        "sd3": "SD3Transformer2DModel",
        "flux": "FluxTransformer2DModel",
        "pixart": "PixArtTransformer2DModel",
    }
    return getattr(diffusers, names[family])


def folder_native(config: dict[str, Any], family: str) -> tuple[int, int]:
    """The image size a model folder's config is made for: ``sample_size`` (latent pixels)
    times the VAE's 8; Flux's config has none and runs at 1024x1024; else 512x512."""
    side = config.get("sample_size")
    if isinstance(side, list) and len(side) == 2 and all(isinstance(x, int) for x in side):
        return side[0] * 8, side[1] * 8
    if isinstance(side, int) and not isinstance(side, bool) and side > 0:
        return side * 8, side * 8
    return (1024, 1024) if family == "flux" else (512, 512)


def text_factory(config: dict[str, Any]) -> Any:
    """A zero-argument builder of the CLIP text encoder a transformers config describes."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    arch = (config.get("architectures") or ["CLIPTextModel"])[0]
    classes = {
        "CLIPTextModel": CLIPTextModel,
        "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
    }
    if arch not in classes or config.get("model_type", "clip_text_model") != "clip_text_model":
        raise ModelLoadError(
            f"text encoder config of architecture {arch!r} (model_type "
            f"{config.get('model_type')!r}); shapetrace builds CLIP text encoders "
            f"({', '.join(classes)})"
        )
    fields = {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}
    return lambda: classes[arch](CLIPTextConfig(**fields))


def _int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, (list, tuple)):
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelLoadError(f"config field {key!r} is {value!r}; expected a whole number")
    return value


def built_from(
    module: nn.Module,
    family: str,
    name: str,
    mode: str,
    *,
    native: tuple[int, int] = (512, 512),
    context_tokens: int | None = None,
    **extra: Any,
) -> BuiltModel:
    """Wrap a built module with the facts its inputs need, read from its config."""
    if family == "text":
        config: dict[str, Any] = getattr(module, "config").to_dict()  # noqa: B009
        return BuiltModel(
            module=module,
            name=name,
            family="text",
            context_dim=_int(config, "hidden_size"),
            latent_channels=0,
            config=config,
            weights=mode,
            context_tokens=context_tokens or _int(config, "max_position_embeddings", 77),
            vocab_size=_int(config, "vocab_size", 49408),
            native=native,
            **extra,
        )
    config = dict(module.config)  # type: ignore[arg-type]
    context_key = {
        "unet": "cross_attention_dim",
        "sd3": "joint_attention_dim",
        "flux": "joint_attention_dim",
        "pixart": "caption_channels",
    }[family]
    patch = {"unet": 1, "flux": 2}.get(family) or _int(config, "patch_size", 2)
    tokens = {"unet": 77, "sd3": 333, "flux": 512, "pixart": 120}[family]
    return BuiltModel(
        module=module,
        name=name,
        family=family,  # type: ignore[arg-type]
        context_dim=_int(config, context_key),
        latent_channels=_int(config, "in_channels"),
        config=config,
        weights=mode,
        context_tokens=context_tokens or tokens,
        patch=patch,
        native=native,
        **extra,
    )
