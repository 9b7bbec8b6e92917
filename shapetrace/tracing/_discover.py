"""Finding the attention layers of a model, and what is known of each before it runs.

A layer is found by what it is, not by one library's names: a diffusers ``Attention`` (or any
``AttentionModuleMixin``, e.g. Flux's), ``nn.MultiheadAttention``, a module with separate q/k/v
projections under any of the usual names (``to_q``, ``q_proj``, T5's ``q``), one with a fused
``qkv``/``to_qkv`` projection, or, weakest, a module whose class is called an attention and
holds a Linear. Names only find candidates: what each tensor is comes from the data flow while
it runs, and a candidate that turns out not to compute attention is reported as not
understood.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "Discovered",
    "LayerInfo",
    "block_parents",
    "discover",
    "find_attention_layers",
    "generation",
    "geometry_ancestors",
    "patch_embeddings",
]

_SEPARATE = (("to_q", "to_k", "to_v"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"))
_FUSED = ("to_qkv", "qkv", "in_proj")
_HEAD_ATTRS = ("heads", "num_heads", "n_heads", "n_head", "num_attention_heads")
_SCALE_ATTRS = ("scale", "scaling")
_NAMED = re.compile(r"attention|attn", re.IGNORECASE)
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)
#: Bumped whenever a module of a model shapetrace has searched gets a submodule (assignment,
#: ``add_module``, a container's append): that model's cached discovery is then stale. A new
#: container built inside a forward (diffusers slices ``self.resnets[1:]``) is no model's
#: module, so it changes nothing. Deleting a submodule is not seen, and needs no action: a
#: cached layer that no longer runs is simply never called.
_GENERATION = [0]
_TRACKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
#: layer -> (its processor and the tree generation when read, names, modules); the layer
#: itself is never touched
_Weights = tuple[Any, int, dict[int, str], dict[int, nn.Module]]
_WEIGHTS: weakref.WeakKeyDictionary[nn.Module, _Weights] = weakref.WeakKeyDictionary()


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


def _family(module: nn.Module, diffusers_types: tuple[type, ...]) -> tuple[str, bool] | None:
    """(family, strong) of a candidate layer, or None. Weak candidates yield to strong ones."""
    if diffusers_types and isinstance(module, diffusers_types):
        return "diffusers", True
    if isinstance(module, nn.MultiheadAttention):
        return "mha", True
    children = module._modules  # a dict lookup: no AttributeError raised per module
    for names in _SEPARATE:
        if all(isinstance(children.get(n), nn.Linear) for n in names):
            return "projections", True
    if any(isinstance(children.get(n), nn.Linear) for n in _FUSED):
        return "fused", True
    if _NAMED.search(type(module).__name__) and any(
        isinstance(c, nn.Linear) for c in module.children()
    ):
        return "named", False
    return None


def _place(name: str) -> str:
    parts = name.split(".")
    if "down_blocks" in parts:
        return "down"
    if "mid_block" in parts:
        return "mid"
    if "up_blocks" in parts:
        return "up"
    if "single_transformer_blocks" in parts:
        return "single"
    if "transformer_blocks" in parts:
        return "transformer"
    lowered = name.lower()
    if "text" in lowered or "encoder" in lowered:
        return "text"
    return "model"


@dataclass(frozen=True)
class LayerInfo:
    """What is known of an attention layer before it runs."""

    name: str
    path: str  # the name in ``named_modules`` ("" for the model itself)
    module: nn.Module
    family: str  # "diffusers" | "mha" | "projections" | "fused" | "named"
    place: str

    @property
    def module_type(self) -> str:
        return type(self.module).__name__

    @property
    def heads(self) -> int | None:
        """The head count the module declares (a hint: the data flow decides)."""
        for attr in _HEAD_ATTRS:
            value = vars(self.module).get(attr)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def declared_scale(self) -> float | None:
        """The score scale the module declares (diffusers and CLIP ``scale``, T5's
        ``scaling`` of 1.0), or None: then 1/sqrt(head_dim) is expected."""
        for attr in _SCALE_ATTRS:
            value = vars(self.module).get(attr)
            if isinstance(value, float) and not isinstance(value, bool):
                return value
        return None

    def processor_name(self) -> str:
        processor = getattr(self.module, "processor", None)
        if processor is not None and not callable(getattr(processor, "__func__", None)):
            return type(processor).__name__
        if self.family == "mha":
            return "multi_head_attention_forward"
        config = vars(self.module).get("config")
        impl = getattr(config, "_attn_implementation", None)
        if isinstance(impl, str):
            return f"{self.module_type} ({impl})"
        return f"{self.module_type}.forward"

    def linear(self, *names: str) -> list[tuple[str, nn.Linear]]:
        """(attribute name, Linear) under these names (a container's first item counts), in
        the order given; the processor's own modules included."""
        found = []
        for owner in (self.module, getattr(self.module, "processor", None)):
            if not isinstance(owner, nn.Module):
                continue
            for name in names:
                item = owner._modules.get(name)
                if isinstance(item, (nn.ModuleList, nn.Sequential)) and len(item) > 0:
                    item = item[0]
                if isinstance(item, nn.Linear):
                    found.append((name, item))
        return found

    def weights(self) -> tuple[dict[int, str], dict[int, nn.Module]]:
        """id(weight) -> the Linear's path inside the layer, and -> the Linear itself: the
        names label projections, the modules let probes find q and k on later calls. Read
        once per processor and module tree (a new processor may bring its own projections)."""
        processor = getattr(self.module, "processor", None)
        cached = _WEIGHTS.get(self.module)
        if cached is not None and cached[0] is processor and cached[1] == _GENERATION[0]:
            return cached[2], cached[3]
        linears = [
            (p, m) for p, m in self.module.named_modules() if isinstance(m, nn.Linear) and p
        ]
        names = {id(m.weight): path for path, m in linears}
        modules: dict[int, nn.Module] = {id(m.weight): m for _p, m in linears}
        _WEIGHTS[self.module] = (processor, _GENERATION[0], names, modules)
        return names, modules


def _prefixes(name: str) -> list[str]:
    """The proper dotted prefixes of a module name: "a.b.c" -> ["a", "a.b"]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_attention_layers(model: nn.Module) -> list[LayerInfo]:
    """Every attention layer of ``model`` that shapetrace can hook, outermost only.

    >>> [i.name for i in find_attention_layers(unet)][:2]          # doctest: +SKIP
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn1', '...attn2']
    """
    diffusers_types = _diffusers_attention_types()
    candidates = [
        (name, module, found)
        for name, module in model.named_modules()
        if (found := _family(module, diffusers_types)) is not None
    ]
    strong: set[str] = set()
    for name, _m, (_f, is_strong) in candidates:
        if is_strong and "" not in strong and not any(p in strong for p in _prefixes(name)):
            strong.add(name)
    chosen: set[str] = set(strong)
    for name, _m, (_f, is_strong) in candidates:
        if is_strong:
            continue
        inside = "" in chosen or any(p in chosen for p in _prefixes(name))
        holds = any(not name or other.startswith(name + ".") for other in strong)
        if not inside and not holds:  # a weak candidate yields to a strong one in or above it
            chosen.add(name)
    layers = []
    for name, module, (family, _s) in candidates:
        if name in chosen:
            shown = name or type(module).__name__
            layers.append(LayerInfo(shown, name, module, family, _place(shown)))
    return layers


def geometry_ancestors(model: nn.Module, layers: list[LayerInfo]) -> list[tuple[str, nn.Module]]:
    """The modules whose inputs can carry the layers' grids: the model itself (SD3's and
    PixArt's latents, Flux's ``img_ids``) and, above each layer's block, the first module
    with a forward of its own (a UNet's ``Transformer2DModel``, given the (B, C, h, w) map)."""
    paths = {info.path for info in layers}
    if "" in paths:
        return []
    modules = dict(model.named_modules())
    found = {""}
    for path in paths:
        above = [p for p in reversed(_prefixes(path)) if not isinstance(modules[p], _CONTAINERS)]
        if len(above) > 1:
            found.add(above[1])  # above[0] is the block itself
    return [(name, m) for name, m in model.named_modules() if name in found]


def block_parents(
    model: nn.Module, layers: list[LayerInfo]
) -> list[tuple[nn.Module, tuple[LayerInfo, ...]]]:
    """The nearest module above each layer that has a forward of its own (a transformer
    block), with the layers under it: its inputs are tagged where they enter, so a layer that
    only sees an already joined sequence (Flux's single-stream blocks) still knows which
    tokens are text."""
    modules = dict(model.named_modules())
    found: dict[int, tuple[nn.Module, list[LayerInfo]]] = {}
    for info in layers:
        for prefix in reversed(_prefixes(info.path)):
            parent = modules[prefix]
            if not isinstance(parent, _CONTAINERS):
                found.setdefault(id(parent), (parent, []))[1].append(info)
                break
    return [(block, tuple(inside)) for block, inside in found.values()]


def patch_embeddings(model: nn.Module) -> list[nn.Module]:
    """Patch embeddings (PixArt, DiT, SD3): a strided conv of kernel = stride = patch size
    under a module declaring an int ``patch_size``; their input gives the token grid."""
    found = []
    for module in model.modules():
        size = vars(module).get("patch_size")
        proj = module._modules.get("proj")
        if isinstance(size, int) and isinstance(proj, nn.Conv2d) and proj.stride == (size, size):
            found.append(module)
    return found


@dataclass(frozen=True)
class Discovered:
    """Everything the tracer hooks in one model: its layers, the blocks around them, the
    modules whose inputs give grids, its patch embeddings."""

    layers: tuple[LayerInfo, ...]
    blocks: tuple[tuple[nn.Module, tuple[LayerInfo, ...]], ...]
    ancestors: tuple[nn.Module, ...]
    patches: tuple[nn.Module, ...]
    generation: int


_WATCHING: list[Any] = []
_DISCOVERED: weakref.WeakKeyDictionary[nn.Module, Discovered] = weakref.WeakKeyDictionary()


def _changed(module: nn.Module, _name: str, _submodule: nn.Module | None) -> None:
    if module in _TRACKED:
        _GENERATION[0] += 1


def generation() -> int:
    """How many times any module tree has changed since shapetrace started watching."""
    return _GENERATION[0]


def discover(model: nn.Module) -> Discovered:
    """The model's attention layers and the modules around them, found once per model and
    found again only after its module tree changed, so a ``with trace(model)`` around every
    denoising step costs hooks, not a search.

    >>> discover(unet).layers[0].name                      # doctest: +SKIP
    'down_blocks.0.attentions.0.transformer_blocks.0.attn1'
    """
    if not _WATCHING:
        from torch.nn.modules.module import register_module_module_registration_hook

        _WATCHING.append(register_module_module_registration_hook(_changed))
    found = _DISCOVERED.get(model)
    if found is not None and found.generation == _GENERATION[0]:
        return found
    generation = _GENERATION[0]
    _TRACKED.update(model.modules())
    layers = find_attention_layers(model)
    found = Discovered(
        layers=tuple(layers),
        blocks=tuple(block_parents(model, layers)),
        ancestors=tuple(m for _n, m in geometry_ancestors(model, layers)),
        patches=tuple(patch_embeddings(model)),
        generation=generation,
    )
    _DISCOVERED[model] = found
    return found
