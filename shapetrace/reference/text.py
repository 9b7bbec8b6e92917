"""Seed 000's simplified CLIP text encoder: token + position embeddings, then a stack of
``nn.TransformerEncoder`` layers, (B, S) token ids -> (B, S, d_model)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shapetrace.errors import InputShapeError

__all__ = ["SimplifiedCLIPTextEncoder"]


class SimplifiedCLIPTextEncoder(nn.Module):
    """Token ids (B, S) with S <= ``max_length`` -> text embeddings (B, S, d_model).

    Defaults are SD 1.5's CLIP ViT-L/14 text tower sizes: 49,408 tokens, 77 positions,
    width 768, 12 layers of 12 heads, feed-forward 3072. Unlike CLIP it has no causal mask
    and no final LayerNorm; it is for shapes, not for meaning.

    Example::

        >>> encoder = SimplifiedCLIPTextEncoder(d_model=64, num_layers=2, nhead=4,
        ...                                     dim_feedforward=128)
        >>> encoder(torch.randint(0, 49408, (2, 77))).shape
        torch.Size([2, 77, 64])
    """

    def __init__(
        self,
        vocab_size: int = 49408,
        max_length: int = 77,
        d_model: int = 768,
        num_layers: int = 12,
        nhead: int = 12,
        dim_feedforward: int = 3072,
    ) -> None:
        super().__init__()
        if d_model % nhead != 0:
            raise InputShapeError(
                f"SimplifiedCLIPTextEncoder: d_model {d_model} is not divisible by nhead "
                f"{nhead}; pick nhead dividing {d_model} (e.g. 12 for 768, 4 for 64)"
            )
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.d_model = d_model
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_length, d_model)
        encoder_layer = nn.TransformerEncoderLayer(
            d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, batch_first=True
        )
        # No nested tensors: they depend on mask values, and meta tensors have none.
        self.transformer = nn.TransformerEncoder(
            encoder_layer, num_layers=num_layers, enable_nested_tensor=False
        )

    def forward(self, text_tokens: Tensor) -> Tensor:
        """text_tokens (B, S) integer ids -> (B, S, d_model)."""
        where = f"SimplifiedCLIPTextEncoder(max_length={self.max_length}, d_model={self.d_model})"
        if text_tokens.dim() != 2:
            raise InputShapeError(
                f"{where}: text_tokens has shape {tuple(text_tokens.shape)}, expected (B, S) "
                f"token ids with S <= {self.max_length}; add the batch axis with .unsqueeze(0)"
            )
        if text_tokens.dtype.is_floating_point or text_tokens.dtype.is_complex:
            raise InputShapeError(
                f"{where}: text_tokens has dtype {text_tokens.dtype}, expected integer token "
                "ids (torch.long); embeddings go to the UNet, ids come here"
            )
        S = text_tokens.shape[1]
        if self.max_length < S:
            raise InputShapeError(
                f"{where}: text_tokens has {S} tokens (shape {tuple(text_tokens.shape)}) but "
                f"only {self.max_length} positions; truncate to {self.max_length} tokens"
            )
        tok_emb = self.token_embedding(text_tokens)  # (B, S, d_model)
        pos = torch.arange(S, device=text_tokens.device)  # (S,)
        pos_emb = self.position_embedding(pos)  # (S, d_model), broadcast over B
        x = tok_emb + pos_emb  # (B, S, d_model)
        out: Tensor = self.transformer(x)  # (B, S, d_model)
        return out
