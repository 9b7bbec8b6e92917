"""Small versions of the architectures people run, built from configs in milliseconds on CPU,
with their inputs: SD3's MMDiT, Flux, PixArt, an IF-style added-KV UNet, CLIP and T5 text
encoders. Each returns (model, args, kwargs, config)."""

from __future__ import annotations

from typing import Any

import torch

Built = tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any], dict[str, Any]]

SD3 = dict(
    sample_size=16,
    patch_size=2,
    in_channels=4,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=12,
    caption_projection_dim=16,
    pooled_projection_dim=6,
    out_channels=4,
    pos_embed_max_size=16,
)
FLUX = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=12,
    pooled_projection_dim=6,
    axes_dims_rope=(4, 6, 6),
)
PIXART = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    cross_attention_dim=16,
    caption_channels=12,
    sample_size=8,
    patch_size=2,
    use_additional_conditions=False,
    norm_type="ada_norm_single",
)
ADDED_KV = dict(
    sample_size=8,
    in_channels=3,
    out_channels=6,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    encoder_hid_dim=20,
    encoder_hid_dim_type="text_proj",
    resnet_time_scale_shift="scale_shift",
    norm_num_groups=8,
)
CLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=100,
    max_position_embeddings=77,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sd3(batch: int = 2, height: int = 128, width: int = 128, text: int = 7) -> Built:
    """SD3's joint attention, image tokens then text: latent (B, 4, h/8, w/8), patches of 2."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(**SD3).eval()
    g = _seeded(1)
    kwargs = {
        "hidden_states": torch.randn(batch, 4, height // 8, width // 8, generator=g),
        "encoder_hidden_states": torch.randn(batch, text, 12, generator=g),
        "pooled_projections": torch.randn(batch, 6, generator=g),
        "timestep": torch.full((batch,), 500.0),
    }
    return model, (), kwargs, dict(SD3)


def flux(batch: int = 1, rows: int = 4, cols: int = 6, text: int = 5) -> Built:
    """Flux's double- and single-stream blocks, text first; position ids with real values."""
    from diffusers import FluxTransformer2DModel

    from shapetrace.models._inputs import flux_ids

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**FLUX).eval()
    g = _seeded(1)
    kwargs = {
        "hidden_states": torch.randn(batch, rows * cols, 16, generator=g),
        "encoder_hidden_states": torch.randn(batch, text, 12, generator=g),
        "pooled_projections": torch.randn(batch, 6, generator=g),
        "timestep": torch.full((batch,), 0.5),
        "img_ids": flux_ids(rows, cols),
        "txt_ids": torch.zeros(text, 3),
    }
    return model, (), kwargs, dict(FLUX)


def pixart(batch: int = 1, height: int = 64, width: int = 64, text: int = 6) -> Built:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(**PIXART).eval()
    g = _seeded(1)
    kwargs = {
        "hidden_states": torch.randn(batch, 4, height // 8, width // 8, generator=g),
        "encoder_hidden_states": torch.randn(batch, text, 12, generator=g),
        "timestep": torch.full((batch,), 10, dtype=torch.long),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    return model, (), kwargs, dict(PIXART)


def added_kv(batch: int = 2, side: int = 16, text: int = 5) -> Built:
    """An IF-style UNet: keys and values are [text, image] in one softmax."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(**ADDED_KV).eval()
    g = _seeded(1)
    args = (torch.randn(batch, 3, side, side, generator=g), torch.tensor([1] * batch))
    return (
        model,
        args,
        {"encoder_hidden_states": torch.randn(batch, text, 20, generator=g)},
        dict(ADDED_KV),
    )


def clip_text(batch: int = 1) -> Built:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(**CLIP)).eval()
    return model, (torch.randint(0, 100, (batch, 77), generator=_seeded(1)),), {}, dict(CLIP)


def t5_encoder(batch: int = 1, tokens: int = 12) -> Built:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(**T5)).eval()
    return model, (torch.randint(0, 100, (batch, tokens), generator=_seeded(1)),), {}, dict(T5)
