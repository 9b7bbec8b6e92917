"""Every way diffusers builds an ``Attention`` layer, as configurations a processor runs on.

A processor sees more than plain cross-attention: self-attention (no ``encoder_hidden_states``),
4-D feature maps (B, C, H, W), a group norm before the projections (the VAE's attention), a
spatial norm conditioned on ``temb`` (MoVQ decoders), a norm on the context (``norm_cross``),
a residual connection and an output rescale, key masks, and added key/value projections
(UnCLIP, Kandinsky, IF). Each :class:`Configuration` builds such a layer for drawn shapes;
its oracle is the same layer and weights on diffusers' reference processor
(``AttnProcessor``, or ``AttnAddedKVProcessor`` for added KV) in float64.

Example::

    >>> [c.name for c in CONFIGURATIONS][:3]
    ['cross', 'self', 'cross_spatial']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from shapetrace.testing._regimes import narrow
from shapetrace.testing.strategies import DEFAULT_MAX_COST, AttentionShapes

__all__ = [
    "ADDED_KV",
    "ADDED_KV_NAMES",
    "CONFIGURATIONS",
    "STANDARD",
    "STANDARD_NAMES",
    "Configuration",
    "configuration",
]


def _groups(channels: int, tokens: int) -> int:
    """The most groups of (32, 16, 8, 4, 2, 1) that divide ``channels`` and still hold two
    values each over ``tokens`` tokens (GroupNorm refuses one)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g * tokens > 1)


@dataclass(frozen=True)
class Configuration:
    """One way to build ``Attention``: what the layer holds and what its input looks like.

    ``primary`` configurations get every invariant that applies; the others get the
    agreement checks (output, gradients, large logits) against the oracle.
    """

    name: str
    summary: str
    primary: bool = False
    self_attention: bool = False
    spatial_input: bool = False
    group_norm: bool = False
    spatial_norm: bool = False
    norm_cross: str | None = None
    residual: bool = False
    rescale: float = 1.0
    added_kv: bool = False
    only_cross: bool = False
    upcast: bool = False

    @property
    def masks(self) -> bool:
        """Whether key masks are drawn (diffusers' added-KV processors pad masks oddly)."""
        return not self.added_kv

    @property
    def plain_math(self) -> bool:
        """Whether the output is ``to_out(attention(to_q(x), to_k(c), to_v(c)))`` exactly."""
        return not (
            self.group_norm
            or self.spatial_norm
            or self.norm_cross
            or self.residual
            or self.rescale != 1.0
            or self.added_kv
        )

    @property
    def context_set(self) -> bool:
        """Whether context tokens are keys on their own, as a set (no norm across them)."""
        return not self.self_attention and self.norm_cross != "group_norm" and not self.added_kv

    @property
    def token_equivariant(self) -> bool:
        """Whether permuting the query tokens permutes the output (no position-dependent
        conditioning such as spatial norm's ``temb`` map)."""
        return not self.spatial_norm

    def adapt(self, shapes: AttentionShapes) -> AttentionShapes:
        """``shapes`` made buildable: a group norm needs two values a group (so two channels
        for one token), the spatial norm's 32 groups need 32 | query_dim."""
        s = shapes
        if self.self_attention or self.added_kv:  # the image's tokens are keys too
            s = self._narrowed(s)
        tied = s.query_dim == s.heads * s.head_dim  # kept tied: some processors need it
        if (self.group_norm or self.added_kv) and s.query_tokens * s.query_dim < 2:
            s = replace(s, query_dim=2, head_dim=2) if tied else replace(s, query_dim=2)
        if self.spatial_norm:
            least = 64 if s.query_tokens == 1 else 32
            s = replace(s, query_dim=max(least, 32 * math.ceil(s.query_dim / 32)))
        if self.norm_cross == "group_norm" and s.context_tokens * s.context_dim < 2:
            s = replace(s, context_dim=2)
        return s

    @staticmethod
    def _narrowed(s: AttentionShapes) -> AttentionShapes:
        """Self-attention costs N x N scores: at most SELF_TOKENS queries, widths thinned to
        the default budget as if the context were the image."""
        n = min(s.query_tokens, SELF_TOKENS)
        sizes = dict(vars(s), query_tokens=n, context_tokens=n + s.context_tokens)
        del sizes["seed"]
        tied = s.query_dim == s.heads * s.head_dim
        fitted = narrow(sizes, max_cost=DEFAULT_MAX_COST, floors={}, tied_query_dim=tied)
        kept = ("batch", "heads", "head_dim", "query_dim")
        return replace(s, **{k: fitted[k] for k in kept}, query_tokens=n)

    def kwargs(self, shapes: AttentionShapes) -> dict[str, Any]:
        """Keyword arguments of ``Attention`` for ``shapes``."""
        s = shapes
        kw: dict[str, Any] = {"heads": s.heads, "dim_head": s.head_dim}
        if self.added_kv:
            kw.update(
                cross_attention_dim=s.query_dim,
                added_kv_proj_dim=s.context_dim,
                only_cross_attention=self.only_cross,
            )
        elif not self.self_attention:
            kw["cross_attention_dim"] = s.context_dim
        if self.group_norm or self.added_kv:
            kw["norm_num_groups"] = _groups(s.query_dim, s.query_tokens)
        if self.spatial_norm:
            kw["spatial_norm_dim"] = TEMB_CHANNELS
        if self.norm_cross:
            kw["cross_attention_norm"] = self.norm_cross
        if self.norm_cross == "group_norm":
            kw["cross_attention_norm_num_groups"] = _groups(s.context_dim, s.context_tokens)
        if self.residual:
            kw["residual_connection"] = True
        if self.rescale != 1.0:
            kw["rescale_output_factor"] = self.rescale
        if self.upcast:
            kw.update(upcast_attention=True, upcast_softmax=True)
        return kw

    def build(self, shapes: AttentionShapes, processor: Any, *, qkv_bias: bool) -> nn.Module:
        """The ``Attention`` layer for ``shapes`` with ``processor`` set (None: the oracle's)."""
        from diffusers.models.attention_processor import (
            Attention,
            AttnAddedKVProcessor,
            AttnProcessor,
        )

        if processor is None:
            processor = AttnAddedKVProcessor() if self.added_kv else AttnProcessor()
        attn = Attention(
            shapes.query_dim, bias=qkv_bias, processor=processor, **self.kwargs(shapes)
        )
        return attn.eval()

    def describe(self, shapes: AttentionShapes) -> str:
        """The layer as a call, for failure messages."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs(shapes).items())
        return (
            f"configuration {self.name!r} ({self.summary}): Attention({shapes.query_dim}, {args})"
        )


SELF_TOKENS = 1100
"""Most query tokens drawn for self-attention (past 1024; N x N scores stay affordable)."""

TEMB_CHANNELS = 4
"""Channels of the spatial norm's conditioning map ``temb`` (a latent, as in MoVQ)."""

STANDARD: tuple[Configuration, ...] = (
    Configuration("cross", "cross-attention on (B, N, C) tokens", primary=True),
    Configuration(
        "self", "self-attention, no encoder_hidden_states", primary=True, self_attention=True
    ),
    Configuration(
        "cross_spatial", "cross-attention on a (B, C, H, W) feature map", spatial_input=True
    ),
    Configuration(
        "self_spatial_group_norm",
        "the VAE's attention: (B, C, H, W), group norm, residual, output rescaled",
        self_attention=True,
        spatial_input=True,
        group_norm=True,
        residual=True,
        rescale=math.sqrt(2.0),
    ),
    Configuration(
        "spatial_norm",
        "MoVQ's decoder attention: (B, C, H, W), spatial norm on temb, residual",
        self_attention=True,
        spatial_input=True,
        spatial_norm=True,
        residual=True,
    ),
    Configuration(
        "norm_cross_layer",
        "cross-attention with a layer norm on the context",
        norm_cross="layer_norm",
    ),
    Configuration(
        "norm_cross_group",
        "cross-attention with a group norm on the context",
        norm_cross="group_norm",
    ),
    Configuration(
        "residual_rescale",
        "cross-attention, residual added, output divided by 2",
        residual=True,
        rescale=2.0,
    ),
    Configuration(
        "upcast", "cross-attention with upcast_attention and upcast_softmax", upcast=True
    ),
)
"""Configurations of layers whose reference processor is ``AttnProcessor``."""

ADDED_KV: tuple[Configuration, ...] = (
    Configuration(
        "added_kv",
        "UnCLIP's: (B, C, H, W), group norm, keys [context, image], residual",
        primary=True,
        spatial_input=True,
        added_kv=True,
    ),
    Configuration(
        "added_kv_only_cross",
        "added KV with only_cross_attention",
        spatial_input=True,
        added_kv=True,
        only_cross=True,
    ),
    Configuration(
        "added_kv_norm_cross",
        "added KV with a group norm on the context",
        spatial_input=True,
        added_kv=True,
        norm_cross="group_norm",
    ),
)
"""Configurations of layers with added key/value projections (``AttnAddedKVProcessor``)."""

STANDARD_NAMES: tuple[str, ...] = tuple(c.name for c in STANDARD)
"""The standard configurations' names: ``check_attn_processor``'s default for processors
other than diffusers' added-KV ones."""

ADDED_KV_NAMES: tuple[str, ...] = tuple(c.name for c in ADDED_KV)
"""The added-KV configurations' names: pass ``configurations=ADDED_KV_NAMES`` for your own
added-KV processor (diffusers' own are recognized)."""

CONFIGURATIONS: tuple[Configuration, ...] = STANDARD + ADDED_KV
"""Every configuration, standard first."""


def configuration(name: str) -> Configuration:
    """The configuration called ``name``; KeyError names the known ones."""
    for config in CONFIGURATIONS:
        if config.name == name:
            return config
    raise KeyError(f"{name!r}; known: {', '.join(c.name for c in CONFIGURATIONS)}")
