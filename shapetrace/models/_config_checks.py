"""A model folder's ``config.json`` checked before anything is built from it.

diffusers fills every key a config leaves out with its own defaults, so ``{}`` builds *a*
UNet, just not the one in the folder; a wrong type surfaces as a traceback from deep inside
its constructor. Here each model class shapetrace builds has a table entry: the keys it
requires (no silent defaults), the type and range of each, and the relations between them.
A class with no entry is refused by name: a text encoder, a VAE, a scheduler.

>>> check_config({"_class_name": "CLIPTextModel", "hidden_size": 768}, where="x/config.json")
Traceback (most recent call last):
shapetrace.errors.ModelLoadError: x/config.json describes a CLIPTextModel (a CLIP text ...

Adding a model class is one more entry in :data:`CLASSES` (its ``family`` tells the loader
what to build: ``"unet"``, ``"sd3"``, ``"flux"``, ``"pixart"`` or ``"text_encoder"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shapetrace._checks import shorten
from shapetrace.errors import ModelLoadError

__all__ = ["CLASSES", "ModelClass", "check_config", "config_class"]

#: A field rule: the problem with a value ("must be ..."), or None when it is fine.
Rule = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v > 0 else "must be a positive whole number"


def positive_ints(v: Any) -> str | None:
    if isinstance(v, list) and v and all(_is_int(x) and x > 0 for x in v):
        return None
    return "must be a non-empty list of positive whole numbers"


def int_or_ints(v: Any) -> str | None:
    """One positive int, or one per block."""
    if positive_int(v) is None or positive_ints(v) is None:
        return None
    return "must be a positive whole number or a list of them (one per block)"


def optional(rule: Rule) -> Rule:
    """``rule``, letting ``null`` through."""
    return lambda v: None if v is None else rule(v)


def one_of(*names: str) -> Rule:
    def check(v: Any) -> str | None:
        return None if v in names else f"must be one of {', '.join(names)}"

    return check


def names_from(*names: str) -> Rule:
    """A non-empty list of block names, each one of ``names``."""

    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            return "must be a non-empty list of block names"
        bad = [x for x in v if x.removeprefix("UNetRes") not in names]
        return f"names unknown blocks {', '.join(map(shorten, bad))}" if bad else None

    return check


def sample_size(v: Any) -> str | None:
    if positive_int(v) is None:
        return None
    if isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v):
        return None
    return "must be a positive whole number or [height, width]"


@dataclass(frozen=True)
class ModelClass:
    """What shapetrace needs of one diffusers/transformers class's config.

    ``family`` is what the loader builds from it; ``required`` keys must be present and pass
    their rule; ``optional`` keys, when present, must pass theirs; ``relations`` returns the
    problems between keys (lengths, divisibility) once each key is fine on its own.
    """

    name: str
    family: str
    what: str
    required: Mapping[str, Rule]
    optional: Mapping[str, Rule] = field(default_factory=dict)
    relations: Callable[[Mapping[str, Any]], list[str]] = lambda config: []

    @property
    def kind(self) -> str:
        """``"denoiser"`` (what a model folder's unet/ or transformer/ holds) or the family."""
        return "text_encoder" if self.family == "text_encoder" else "denoiser"


_DOWN = names_from(
    "DownBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D",
    "SimpleCrossAttnDownBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D",
    "DownEncoderBlock2D", "AttnDownEncoderBlock2D", "KDownBlock2D", "KCrossAttnDownBlock2D",
)  # fmt: skip
_UP = names_from(
    "UpBlock2D", "ResnetUpsampleBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D",
    "SimpleCrossAttnUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D", "UpDecoderBlock2D",
    "AttnUpDecoderBlock2D", "KUpBlock2D", "KCrossAttnUpBlock2D",
)  # fmt: skip


def _per_block(config: Mapping[str, Any], key: str, blocks: int) -> list[int] | None:
    value = config.get(key)
    if isinstance(value, list):
        return list(value) if len(value) == blocks else None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * blocks
    return None


def _unet_relations(config: Mapping[str, Any]) -> list[str]:
    """Lengths per block, channels divisible by groups and by heads."""
    channels: list[int] = config["block_out_channels"]
    blocks = len(channels)
    problems = [
        f"{key} has {len(config[key])} entries but block_out_channels has {blocks}"
        for key in ("down_block_types", "up_block_types")
        if len(config[key]) != blocks
    ]
    for key in ("layers_per_block", "cross_attention_dim", "attention_head_dim",
                "transformer_layers_per_block"):  # fmt: skip
        value = config.get(key)
        if isinstance(value, list) and len(value) != blocks:
            problems.append(f"{key} has {len(value)} entries but block_out_channels has {blocks}")
    groups = config.get("norm_num_groups", 32)
    if _is_int(groups) and groups > 0:
        problems += [
            f"block_out_channels {c} is not divisible by norm_num_groups {groups}"
            for c in channels
            if c % groups
        ]
    heads = _per_block(config, "attention_head_dim", blocks)  # diffusers' name for the heads
    if heads is not None:
        problems += [
            f"block_out_channels {c} is not divisible by attention_head_dim {h} (the heads)"
            for c, h in zip(channels, heads, strict=True)
            if c % h
        ]
    if config.get("addition_embed_type") == "text_time":
        problems += [
            f"addition_embed_type 'text_time' (SDXL) needs {key}"
            for key in ("addition_time_embed_dim", "projection_class_embeddings_input_dim")
            if positive_int(config.get(key)) is not None
        ]
    return problems


_UNET = ModelClass(
    name="UNet2DConditionModel",
    family="unet",
    what="a diffusers UNet with cross-attention",
    required={
        "in_channels": positive_int,
        "out_channels": positive_int,
        "block_out_channels": positive_ints,
        "down_block_types": _DOWN,
        "up_block_types": _UP,
        "layers_per_block": int_or_ints,
        "cross_attention_dim": int_or_ints,
        "attention_head_dim": int_or_ints,
    },
    optional={
        "num_attention_heads": lambda v: (
            None if v is None else "must be null (the heads come from attention_head_dim)"
        ),
        "transformer_layers_per_block": optional(int_or_ints),
        "norm_num_groups": positive_int,
        "sample_size": optional(sample_size),
        "mid_block_type": optional(
            one_of("UNetMidBlock2DCrossAttn", "UNetMidBlock2DSimpleCrossAttn", "UNetMidBlock2D")
        ),
        "addition_embed_type": optional(one_of("text", "text_image", "text_time", "image")),
        "addition_time_embed_dim": optional(positive_int),
        "projection_class_embeddings_input_dim": optional(positive_int),
    },
    relations=_unet_relations,
)

_CLIP_TEXT_FIELDS: dict[str, Rule] = {
    "hidden_size": positive_int,
    "intermediate_size": positive_int,
    "num_attention_heads": positive_int,
    "num_hidden_layers": positive_int,
    "vocab_size": positive_int,
    "max_position_embeddings": positive_int,
}


def _clip_relations(config: Mapping[str, Any]) -> list[str]:
    problems = []
    if config["hidden_size"] % config["num_attention_heads"]:
        problems.append(
            f"hidden_size {config['hidden_size']} is not divisible by num_attention_heads "
            f"{config['num_attention_heads']}"
        )
    if config["vocab_size"] < 49408:
        problems.append(f"vocab_size {config['vocab_size']} is below CLIP BPE's 49408 ids")
    if config["max_position_embeddings"] < 77:
        problems.append(
            f"max_position_embeddings {config['max_position_embeddings']} is below SD's 77 tokens"
        )
    return problems


_CLIP = ModelClass(
    name="CLIPTextModel",
    family="text_encoder",
    what="a CLIP text encoder",
    required=_CLIP_TEXT_FIELDS,
    relations=_clip_relations,
)

def _heads_relations(width_key: str | None) -> Callable[[Mapping[str, Any]], list[str]]:
    """A transformer's inner width is heads x head_dim; ``width_key`` must equal it."""

    def relations(config: Mapping[str, Any]) -> list[str]:
        inner = config["num_attention_heads"] * config["attention_head_dim"]
        if width_key is None or config.get(width_key) in (None, inner):
            return []
        return [
            f"{width_key} {config[width_key]} is not num_attention_heads x attention_head_dim "
            f"= {config['num_attention_heads']} x {config['attention_head_dim']} = {inner}"
        ]

    return relations


_TRANSFORMER_FIELDS: dict[str, Rule] = {
    "in_channels": positive_int,
    "num_layers": positive_int,
    "attention_head_dim": positive_int,
    "num_attention_heads": positive_int,
}

_SD3 = ModelClass(
    name="SD3Transformer2DModel",
    family="sd3",
    what="the SD3 transformer (MMDiT)",
    required={
        **_TRANSFORMER_FIELDS,
        "sample_size": positive_int,
        "patch_size": positive_int,
        "joint_attention_dim": positive_int,
        "caption_projection_dim": positive_int,
        "pooled_projection_dim": positive_int,
    },
    optional={
        "out_channels": optional(positive_int),
        "pos_embed_max_size": optional(positive_int),
        "dual_attention_layers": lambda v: (
            None if isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)
            else "must be a list of layer indices"
        ),
    },
    relations=_heads_relations("caption_projection_dim"),
)


def _flux_relations(config: Mapping[str, Any]) -> list[str]:
    """RoPE splits each head's dims over the axes (t, h, w): they must add up to head_dim."""
    axes = config.get("axes_dims_rope", [16, 56, 56])  # diffusers' default, Flux's own
    if not isinstance(axes, list) or not all(_is_int(x) and x > 0 for x in axes):
        return [f"axes_dims_rope must be a list of positive whole numbers, got {shorten(axes)}"]
    if sum(axes) != config["attention_head_dim"]:
        return [
            f"axes_dims_rope {axes} adds up to {sum(axes)}, not attention_head_dim "
            f"{config['attention_head_dim']} (RoPE rotates every dim of a head)"
        ]
    return []


_FLUX = ModelClass(
    name="FluxTransformer2DModel",
    family="flux",
    what="the Flux transformer",
    required={
        **_TRANSFORMER_FIELDS,
        "num_single_layers": positive_int,
        "joint_attention_dim": positive_int,
        "pooled_projection_dim": positive_int,
    },
    optional={
        "patch_size": lambda v: None if v == 1 else "must be 1 (Flux packs 2x2 patches itself)",
        "guidance_embeds": lambda v: None if isinstance(v, bool) else "must be true or false",
        "out_channels": optional(positive_int),
    },
    relations=_flux_relations,
)

_PIXART_FIELDS: dict[str, Rule] = {
    **_TRANSFORMER_FIELDS,
    "sample_size": positive_int,
    "patch_size": positive_int,
    "caption_channels": positive_int,
    "cross_attention_dim": positive_int,
}


def _pixart_relations(config: Mapping[str, Any]) -> list[str]:
    problems = _heads_relations("cross_attention_dim")(config)
    norm = config.get("norm_type", "ada_norm_single")
    if norm != "ada_norm_single":
        problems.append(
            f"norm_type {shorten(norm)} is not PixArt's 'ada_norm_single'; shapetrace builds a "
            "Transformer2DModel config as PixArt's transformer only"
        )
    return problems


_PIXART = ModelClass(
    name="PixArtTransformer2DModel",
    family="pixart",
    what="the PixArt transformer",
    required=_PIXART_FIELDS,
    optional={"out_channels": optional(positive_int)},
    relations=_pixart_relations,
)
#: PixArt-alpha's published config names the class diffusers 0.22 saved it as.
_PIXART_ALPHA = ModelClass(
    name="Transformer2DModel",
    family="pixart",
    what="PixArt-alpha's transformer (as diffusers 0.22 saved it)",
    required={**_PIXART_FIELDS, "norm_type": one_of("ada_norm_single")},
    optional=_PIXART.optional,
    relations=_pixart_relations,
)

#: Every class shapetrace builds from a folder, by the name its config gives.
CLASSES: dict[str, ModelClass] = {
    c.name: c for c in (_UNET, _SD3, _FLUX, _PIXART, _PIXART_ALPHA, _CLIP)
}

#: Classes met in diffusers folders that shapetrace does not build, and what they are.
KNOWN: dict[str, str] = {
    "CLIPTextModelWithProjection": "SDXL's second CLIP text encoder",
    "T5EncoderModel": "a T5 text encoder",
    "AutoencoderKL": "the VAE",
    "UNet2DModel": "an unconditional UNet (it has no cross-attention)",
    "CLIPVisionModelWithProjection": "an image encoder",
}


def _either(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def config_class(config: Mapping[str, Any]) -> str | None:
    """The class a config describes: diffusers' ``_class_name``, else transformers'
    ``architectures[0]``, else None."""
    name = config.get("_class_name")
    if name is None and isinstance(config.get("architectures"), list) and config["architectures"]:
        name = config["architectures"][0]
    if name is None and config.get("model_type") == "clip_text_model":
        name = "CLIPTextModel"
    return name if isinstance(name, str) else None


def check_config(
    config: Mapping[str, Any], *, where: str, family: str = "unet", default: str | None = None
) -> ModelClass:
    """The :class:`ModelClass` of ``config`` if it is one of ``family`` and complete;
    ModelLoadError naming ``where``, the class or the keys, and the fix otherwise.

    ``family`` is one family (``"unet"``, ``"text_encoder"``, ...) or ``"denoiser"``: any class
    a model folder's ``unet/`` or ``transformer/`` may hold. ``default`` is the class assumed
    when the config names none (a hand-written UNet config).
    """
    wanted = [c for c in CLASSES.values() if family in (c.family, c.kind)]
    names = _either(sorted({c.name for c in wanted if c.name != "Transformer2DModel"}))
    if family == "denoiser":
        names = f"UNet or transformer shapetrace traces ({names.replace(' or ', ', ')})"
    name = config_class(config) or default
    if name is None:
        raise ModelLoadError(
            f"{where} names no model class (no _class_name); shapetrace needs a {names} config. "
            "Restore the file from the model's source"
        )
    spec = CLASSES.get(name)
    if spec is None or spec not in wanted:
        what = spec.what if spec is not None else KNOWN.get(name, "a class shapetrace cannot trace")
        where_to = {
            "unet": "a diffusers UNet instead (unet/ in a pipeline folder)",
            "denoiser": "a UNet or a transformer instead (unet/ or transformer/ in a pipeline "
            "folder)",
            "text_encoder": "a CLIP text encoder instead (text_encoder/)",
        }.get(family, f"{wanted[0].what} instead")
        raise ModelLoadError(
            f"{where} describes a {shorten(name, 60)[1:-1]} ({what}), not a {names}; "
            f"point at the folder of {where_to}"
        )
    problems = [f"{key} is missing" for key in spec.required if key not in config]
    for key, rule in [*spec.required.items(), *spec.optional.items()]:
        if key in config:
            problem = rule(config[key])
            if problem is not None:
                problems.append(f"{key} {problem}, got {shorten(config[key], 40)}")
    if not problems:
        problems = spec.relations(config)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelLoadError(
            f"{where} is not a usable {spec.name} config: {'; '.join(problems[:3])}{more}. "
            "shapetrace does not fill missing keys with diffusers' defaults: restore the "
            "file from the model's source"
        )
    return spec
