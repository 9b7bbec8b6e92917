"""The attention layers a model has, computed from its config alone, as the tests' reference.

Nothing here runs the model or the tracer: block types, layer counts, channel widths, head
counts and the image size give, for each attention layer in call order, its name, kind, token
grid, head count and head dim, and the shape of every contract stage. diffusers' legacy
naming is followed as the shared design notes describe it: a UNet's ``attention_head_dim`` is
the number of heads per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # self | cross | joint
    grid: tuple[int, int] | None
    heads: int
    head_dim: int
    n: int  # the layer's own (image or text) tokens
    m: int  # text tokens its keys hold (0 for self-attention)
    width: int  # H·d
    query_first: str = "hidden"  # joint attention: whose tokens come first
    joined: bool = False  # projects text and image as one sequence (Flux single-stream)

    @property
    def keys(self) -> int:
        return self.n + self.m if self.kind == "joint" else (self.m or self.n)

    @property
    def queries(self) -> int:
        return self.n + self.m if self.kind == "joint" else self.n

    def stage_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """The contract's stages of this layer, in the normalized layout."""
        b, h, d, c = batch, self.heads, self.head_dim, self.width
        n, q, k = self.n, self.queries, self.keys
        shapes = {
            "query": (b, n, c),
            "query_heads": (b, h, q, d),
            "key_heads": (b, h, k, d),
            "value_heads": (b, h, k, d),
            "scores": (b, h, q, k),
            "probs": (b, h, q, k),
            "attended": (b, h, q, d),
            "merged": (b, q, c),
        }
        if self.kind == "cross":
            shapes.update(key=(b, self.m, c), value=(b, self.m, c))
        elif self.joined:
            shapes.update(query=(b, q, c), key=(b, q, c), value=(b, q, c))
        else:
            shapes.update(key=(b, n, c), value=(b, n, c))
        if self.kind == "joint" and not self.joined:
            m = self.m
            shapes.update(context_query=(b, m, c), context_key=(b, m, c), context_value=(b, m, c))
        if self.kind == "joint":
            shapes["cross_probs"] = (b, h, n, self.m)
        return shapes


def _per_block(value: Any, blocks: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * blocks


def unet_layers(
    config: dict[str, Any], height: int, width: int, context_tokens: int = 77
) -> list[Layer]:
    """Every attention layer of a UNet2DConditionModel with cross-attention transformer blocks."""
    down, up = config["down_block_types"], config["up_block_types"]
    channels = list(config["block_out_channels"])
    heads = _per_block(config.get("num_attention_heads") or config["attention_head_dim"], len(down))
    depth = _per_block(config.get("transformer_layers_per_block", 1), len(down))
    per_block = config["layers_per_block"]
    h0, w0 = height // 8, width // 8
    out: list[Layer] = []

    def transformer(prefix: str, c: int, n_heads: int, layers: int, level: int) -> None:
        grid = (h0 // 2**level, w0 // 2**level)
        n = grid[0] * grid[1]
        for t in range(layers):
            base = f"{prefix}.transformer_blocks.{t}"
            out.append(Layer(f"{base}.attn1", "self", grid, n_heads, c // n_heads, n, 0, c))
            out.append(
                Layer(f"{base}.attn2", "cross", grid, n_heads, c // n_heads, n, context_tokens, c)
            )

    for i, kind in enumerate(down):
        if "CrossAttn" in kind:
            for j in range(per_block):
                transformer(f"down_blocks.{i}.attentions.{j}", channels[i], heads[i], depth[i], i)
    last = len(channels) - 1
    transformer("mid_block.attentions.0", channels[-1], heads[-1], depth[-1], last)
    for i, kind in enumerate(up):
        level = last - i
        if "CrossAttn" in kind:
            for j in range(per_block + 1):
                transformer(
                    f"up_blocks.{i}.attentions.{j}",
                    channels[level],
                    heads[level],
                    depth[level],
                    level,
                )
    return out


def sd3_layers(config: dict[str, Any], height: int, width: int, text: int = 333) -> list[Layer]:
    """SD3's MMDiT: every block one joint attention, image tokens first, then the text."""
    p = config["patch_size"]
    grid = (height // 8 // p, width // 8 // p)
    h, d = config["num_attention_heads"], config["attention_head_dim"]
    return [
        Layer(f"transformer_blocks.{i}.attn", "joint", grid, h, d, grid[0] * grid[1], text, h * d)
        for i in range(config["num_layers"])
    ]


def flux_layers(config: dict[str, Any], height: int, width: int, text: int = 512) -> list[Layer]:
    """Flux: double-stream then single-stream blocks, all joint, the text tokens first; the
    latent is packed in 2x2 patches."""
    grid = (height // 16, width // 16)
    h, d = config["num_attention_heads"], config["attention_head_dim"]
    n = grid[0] * grid[1]

    def layer(name: str, joined: bool) -> Layer:
        return Layer(name, "joint", grid, h, d, n, text, h * d, "context", joined)

    double = [layer(f"transformer_blocks.{i}.attn", False) for i in range(config["num_layers"])]
    single = [
        layer(f"single_transformer_blocks.{i}.attn", True)
        for i in range(config["num_single_layers"])
    ]
    return double + single


def pixart_layers(config: dict[str, Any], height: int, width: int, text: int = 120) -> list[Layer]:
    """PixArt: each block self-attention over the patches, then cross-attention to the text."""
    p = config["patch_size"]
    grid = (height // 8 // p, width // 8 // p)
    h, d = config["num_attention_heads"], config["attention_head_dim"]
    n = grid[0] * grid[1]
    out = []
    for i in range(config["num_layers"]):
        out.append(Layer(f"transformer_blocks.{i}.attn1", "self", grid, h, d, n, 0, h * d))
        out.append(Layer(f"transformer_blocks.{i}.attn2", "cross", grid, h, d, n, text, h * d))
    return out


def clip_text_layers(config: dict[str, Any], tokens: int = 77) -> list[Layer]:
    """A CLIP text encoder: causal self-attention over the tokens, no grid. Names are given
    from ``encoder.`` on: transformers nests them under ``text_model.`` in some classes."""
    h = config["num_attention_heads"]
    c = config["hidden_size"]
    return [
        Layer(f"encoder.layers.{i}.self_attn", "self", None, h, c // h, tokens, 0, c)
        for i in range(config["num_hidden_layers"])
    ]
