"""A whole toy pipeline from the seeds: text encoder -> CrossAttnResBlock -> seed 001's
single-head spatial cross-attention, on one UNet-level feature map."""

from __future__ import annotations

from torch import Tensor, nn

from shapetrace.errors import InputShapeError
from shapetrace.reference.attention import SpatialCrossAttention
from shapetrace.reference.blocks import CrossAttnResBlock, timestep_embedding
from shapetrace.reference.text import SimplifiedCLIPTextEncoder

__all__ = ["ReferenceModel"]


class ReferenceModel(nn.Module):
    """tokens (B, 77) -> context (B, 77, context_dim); x (B, C, h, w) with the timestep
    embedding -> ``CrossAttnResBlock`` (multi-head) -> ``SpatialCrossAttention`` (one head,
    residual) -> (B, C, h, w).

    Defaults match SD 1.5's first UNet level: 320 channels, 8 heads of 40, context 768.
    At 256x256 (latent 32x32) the feature map is the tutorial table's (1, 320, 32, 32).

    Example::

        >>> model = ReferenceModel(channels=32, context_dim=64, heads=4, time_emb_dim=128,
        ...                        text_layers=1, text_heads=4)
        >>> x, t = torch.randn(2, 32, 24, 40), torch.tensor([10, 999])
        >>> model(x, t, torch.randint(0, 49408, (2, 77))).shape
        torch.Size([2, 32, 24, 40])
    """

    def __init__(
        self,
        channels: int = 320,
        context_dim: int = 768,
        heads: int = 8,
        time_emb_dim: int = 1280,
        text_layers: int = 12,
        vocab_size: int = 49408,
        *,
        text_heads: int = 12,
        max_length: int = 77,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.context_dim = context_dim
        self.heads = heads
        self.time_emb_dim = time_emb_dim
        self.max_length = max_length
        self.text_encoder = SimplifiedCLIPTextEncoder(
            vocab_size=vocab_size,
            max_length=max_length,
            d_model=context_dim,
            num_layers=text_layers,
            nhead=text_heads,
            dim_feedforward=4 * context_dim,
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(channels, time_emb_dim), nn.SiLU(), nn.Linear(time_emb_dim, time_emb_dim)
        )
        self.block = CrossAttnResBlock(channels, time_emb_dim, context_dim, num_heads=heads)
        self.spatial_attn = SpatialCrossAttention(channels, context_dim)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        """x (B, C, h, w), t (B,) or 0-d, tokens (B, S<=77) long -> (B, C, h, w)."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise InputShapeError(
                f"ReferenceModel(channels={self.channels}): x has shape {tuple(x.shape)}, "
                f"expected (B, {self.channels}, h, w)"
            )
        B = x.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,) or tokens.dim() != 2 or tokens.shape[0] != B:
            raise InputShapeError(
                f"ReferenceModel: x {tuple(x.shape)}, t {tuple(t.shape)} and tokens "
                f"{tuple(tokens.shape)} must share batch {B}; expected t ({B},) and tokens "
                f"({B}, {self.max_length})"
            )
        context = self.text_encoder(tokens)  # (B, S, context_dim)
        t_emb = self.time_mlp(timestep_embedding(t, self.channels))  # (B, time_emb_dim)
        h = self.block(x, t_emb, context)  # (B, C, h, w)
        out: Tensor = h + self.spatial_attn(h, context)  # (B, C, h, w)
        return out
