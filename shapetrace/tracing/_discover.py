"""Finding the attention layers of a model, and the facts about each that need no forward."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["LayerInfo", "find_attention_layers", "geometry_ancestors"]


def _diffusers_attention_types() -> tuple[type, ...]:
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:  # diffusers is optional for tracing plain modules
        return ()
    types: list[type] = [Attention]
    try:
        from diffusers.models.attention import AttentionModuleMixin

        types.append(AttentionModuleMixin)
    except ImportError:
        pass
    return tuple(types)


def _first_linear(module: nn.Module | None) -> nn.Linear | None:
    """``to_out`` is a Linear or a container whose first item is one."""
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) > 0:
        first = module[0]
        return first if isinstance(first, nn.Linear) else None
    return None


def _has_projections(module: nn.Module) -> bool:
    children = module._modules  # a dict lookup: no AttributeError raised per module
    if "to_q" not in children:
        return False
    projections = (children.get(n) for n in ("to_q", "to_k", "to_v"))
    return all(isinstance(p, nn.Linear) for p in projections) and (
        _first_linear(children.get("to_out")) is not None
    )


@dataclass(frozen=True)
class LayerInfo:
    """What is known of an attention layer before it runs."""

    name: str
    path: str  # the name in ``named_modules`` ("" for the model itself)
    module: nn.Module
    family: str  # "diffusers" | "projections" | "mha"
    place: str
    heads: int | None
    to_q: nn.Linear | None
    to_k: nn.Linear | None
    to_v: nn.Linear | None
    to_out: nn.Linear | None

    @property
    def module_type(self) -> str:
        return type(self.module).__name__

    def processor_name(self) -> str:
        processor = getattr(self.module, "processor", None)
        if processor is not None:
            return type(processor).__name__
        if self.family == "mha":
            return "multi_head_attention_forward"
        return f"{self.module_type}.forward"


def _prefixes(name: str) -> list[str]:
    """The proper dotted prefixes of a module name: "a.b.c" -> ["a", "a.b"]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _place(name: str) -> str:
    parts = name.split(".")
    if "down_blocks" in parts:
        return "down"
    if "mid_block" in parts:
        return "mid"
    if "up_blocks" in parts:
        return "up"
    lowered = name.lower()
    if "text" in lowered or "encoder" in lowered:
        return "text"
    return "model"


def _heads(module: nn.Module) -> int | None:
    for attr in ("heads", "num_heads", "n_heads", "n_head"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _is_attention(module: nn.Module, diffusers_types: tuple[type, ...]) -> str | None:
    if diffusers_types and isinstance(module, diffusers_types):
        return "diffusers"
    if isinstance(module, nn.MultiheadAttention):
        return "mha"
    if _has_projections(module):
        return "projections"
    return None


def find_attention_layers(model: nn.Module) -> list[LayerInfo]:
    """Every attention layer of ``model`` that shapetrace can hook, outermost only.

    >>> [i.name for i in find_attention_layers(unet)][:2]          # doctest: +SKIP
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn1', '...attn2']
    """
    diffusers_types = _diffusers_attention_types()
    found: list[LayerInfo] = []
    taken: set[str] = set()
    for name, module in model.named_modules():
        if taken and any(prefix in taken for prefix in _prefixes(name)):
            continue  # inside a layer already found: its forward is traced as part of that one
        family = _is_attention(module, diffusers_types)
        if family is None:
            continue
        shown = name or type(module).__name__
        taken.add(name)
        to_out = _first_linear(getattr(module, "to_out", None))
        found.append(
            LayerInfo(
                name=shown,
                path=name,
                module=module,
                family=family,
                place=_place(shown),
                heads=_heads(module),
                to_q=getattr(module, "to_q", None),
                to_k=getattr(module, "to_k", None),
                to_v=getattr(module, "to_v", None),
                to_out=to_out,
            )
        )
        if name == "":
            break  # the model is itself one attention layer
    return found


def geometry_ancestors(model: nn.Module, layers: list[LayerInfo]) -> list[nn.Module]:
    """Modules that contain an attention layer: their 4-D inputs give the layers' geometry."""
    paths = {info.path for info in layers}
    if "" in paths:
        return []
    enclosing = {"", *(prefix for path in paths for prefix in _prefixes(path))}
    return [module for name, module in model.named_modules() if name in enclosing]
