"""``build_model``: a preset (``sd15``, ``sdxl``, ``flux``, ``tiny``, ...) or a local diffusers
model folder (a UNet, or an SD3, Flux or PixArt transformer), on ``meta`` (shapes only, no
memory), with seeded random weights, or with the folder's safetensors weights. Nothing is
downloaded and nothing is unpickled."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from shapetrace._checks import check_device, check_dtype, check_seed, shorten, show
from shapetrace.errors import ModelLoadError
from shapetrace.models._build import built_from, denoiser_class, folder_native, text_factory
from shapetrace.models._checkpoint import check_weights
from shapetrace.models._config_checks import check_config
from shapetrace.models.built import BuiltModel
from shapetrace.models.presets import DENOISER, PRESETS, Preset, get_preset, read_config
from shapetrace.reference.model import ReferenceModel

__all__ = ["build_model", "check_folder", "check_unet_folder", "load_folder", "load_unet_folder"]

Weights = Literal["meta", "random", "local"]
_WEIGHTS: tuple[str, ...] = ("meta", "random", "local")
_WEIGHTS_NAME = "diffusion_pytorch_model"


def build_model(
    name_or_path: str | Path,
    *,
    weights: Weights | None = None,
    device: str | torch.device = "meta",
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
) -> BuiltModel:
    """Build a preset or a local model folder, in eval mode, ready for :meth:`BuiltModel.inputs`.

    ``weights`` defaults to ``"meta"`` on the meta device, otherwise ``"random"`` for presets
    (seeded with ``seed``; the global RNG is left as it was) and ``"local"`` for folders.
    ``device`` and ``dtype`` take torch objects or their names (``"cpu"``, ``"float16"``).

    Example::

        >>> model = build_model("sd15")                     # 859,520,964 params, on meta
        >>> model.num_parameters(), model.context_dim
        (859520964, 768)
        >>> tiny = build_model("tiny", device="cpu", seed=1)  # random weights, ~3M params
    """
    dev = check_device(device, "device")
    dtype = check_dtype(dtype, "dtype")
    seed = check_seed(seed, "seed")
    path = _as_path(name_or_path)
    if path is None:
        preset, part = _preset_and_part(str(name_or_path))
        mode = _weights_mode(weights, dev, default="random", where=f"preset {preset.name!r}")
        if mode == "local":
            raise ModelLoadError(
                f"weights='local' needs a folder, but {preset.name!r} is a preset; pass the "
                "folder's path, or weights='random' / 'meta'"
            )
        return _build_preset(preset, mode, dev, dtype, seed, part)
    mode = _weights_mode(weights, dev, default="local", where=str(path))
    return load_folder(path, weights=mode, device=dev, dtype=dtype, seed=seed)


def _preset_and_part(name: str) -> tuple[Preset, str | None]:
    """``"sdxl"`` or ``"sdxl:text_encoder_2"``: the preset and the text encoder asked for."""
    base, _, part = name.partition(":")
    preset = get_preset(base)
    if not part:
        return preset, None
    if part not in preset.text_parts:
        have = ", ".join(f"{base}:{p}" for p in preset.text_parts) or "none"
        raise ModelLoadError(
            f"{name!r}: preset {base!r} has no text encoder {part!r}; its text encoders: {have}"
        )
    return preset, part


def _as_path(name_or_path: str | Path) -> Path | None:
    """The path meant, or None when the name is a preset (a preset wins over a same-named dir)."""
    if isinstance(name_or_path, Path):
        return name_or_path.expanduser()
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelLoadError(
            f"model {shorten(name_or_path)} names no preset or folder; pass one of "
            f"{', '.join(PRESETS)} or the path of a local diffusers model folder"
        )
    if name_or_path.partition(":")[0] in PRESETS:
        return None
    looks_like_path = any(c in name_or_path for c in "/\\") or name_or_path.startswith(("~", "."))
    try:
        exists = Path(name_or_path).exists()
    except OSError:  # a name too long for the file system is no folder
        exists = False
    if looks_like_path or exists:
        return Path(name_or_path).expanduser()
    return None


def _weights_mode(
    weights: str | None, dev: torch.device, *, default: Weights, where: str
) -> Weights:
    """Resolve weights=None and refuse combinations that cannot work."""
    if weights is not None and weights not in _WEIGHTS:
        raise ModelLoadError(f"weights={weights!r} for {where}; use one of {_WEIGHTS} or None")
    mode: Weights = (
        cast(Weights, weights) if weights else ("meta" if dev.type == "meta" else default)
    )
    if mode == "meta" and dev.type != "meta":
        raise ModelLoadError(
            f"weights='meta' for {where} needs device='meta', got device='{dev}'; "
            "use weights='random' for values on a real device"
        )
    if mode != "meta" and dev.type == "meta":
        raise ModelLoadError(
            f"weights={mode!r} for {where} on device='meta': meta tensors hold no values; "
            "use device='cpu' (or 'cuda'), or weights='meta' for shapes only"
        )
    return mode


def _instantiate(
    factory: Callable[[], nn.Module], mode: str, dev: torch.device, dtype: torch.dtype, seed: int
) -> nn.Module:
    """Build on meta, or seeded on CPU then moved, so a seed gives the same weights anywhere."""
    if mode == "meta":
        with torch.device("meta"):
            module = factory()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = factory()
    # nn.Module.to, not ModelMixin.to: diffusers 0.42 warns on every dtype cast, even when
    # no module needs to stay in float32. Nothing else in its override applies here.
    return nn.Module.to(module, device=dev, dtype=dtype).eval()


def _build_preset(
    preset: Preset, mode: str, dev: torch.device, dtype: torch.dtype, seed: int,
    part: str | None = None,
) -> BuiltModel:
    """A preset (or one of its text encoders) on meta or with seeded random weights."""
    native, description = preset.native, preset.description
    if part is not None:
        factory = text_factory(read_config(preset.parts[part]))
        module = _instantiate(factory, mode, dev, dtype, seed)
        name = f"{preset.name}:{part}"
        return built_from(module, "text", name, mode, native=native, description=description)
    if preset.family == "reference":
        kwargs = dict(preset.reference)
        module = _instantiate(lambda: ReferenceModel(**kwargs), mode, dev, dtype, seed)
        return BuiltModel(
            module=module,
            name=preset.name,
            family="reference",
            context_dim=int(kwargs.get("context_dim", 768)),
            latent_channels=int(kwargs.get("channels", 320)),
            config=kwargs,
            weights=mode,
            vocab_size=int(kwargs.get("vocab_size", 49408)),
            native=native,
            description=description,
        )
    config = read_config(preset.parts[DENOISER[preset.family]])
    cls = denoiser_class(preset.family)
    module = _instantiate(lambda: cls.from_config(config), mode, dev, dtype, seed)
    return built_from(module, preset.family, preset.name, mode,
                      context_tokens=preset.context_tokens, native=native, description=description)


def load_folder(
    path: str | Path,
    *,
    weights: Weights = "local",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
) -> BuiltModel:
    """A diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) of a
    UNet, SD3, Flux or PixArt transformer, or a pipeline folder holding one in ``unet/`` or
    ``transformer/``, checked before anything is loaded. The class comes from the config's
    ``_class_name`` (a config that names none is read as a UNet's).

    ``weights="local"`` reads the safetensors (never pickles); ``"meta"`` and ``"random"``
    build from ``config.json`` alone. Every problem is a ModelLoadError naming file and fix.

    Example::

        >>> unet.save_pretrained("tiny_unet", safe_serialization=True)
        >>> load_folder("tiny_unet").module.dtype
        torch.float32
    """
    dev = check_device(device, "device")
    dtype = check_dtype(dtype, "dtype")
    folder = _model_folder(Path(path).expanduser())
    config, family = _read_model_config(folder)
    cls = denoiser_class(family)
    name = folder.name if folder.name not in _PARTS else folder.parent.name
    facts: dict[str, Any] = {"source": folder, "native": folder_native(config, family)}
    if weights != "local":
        model = _instantiate(lambda: cls.from_config(config), weights, dev, dtype, seed)
        return built_from(model, family, name, weights, **facts)
    variant = check_weights(folder, config, cls)
    try:
        model = cls.from_pretrained(
            folder,
            use_safetensors=True,
            local_files_only=True,
            torch_dtype=dtype,
            variant=variant,
            # Said outright, diffusers does not warn on every load that accelerate is absent.
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
        )
    except Exception as err:  # diffusers raises OSError, ValueError, RuntimeError, ...
        raise ModelLoadError(
            f"diffusers could not load the {cls.__name__} in {folder}: {type(err).__name__}: "
            f"{err}; check that config.json matches the weights, or re-save the folder with "
            "save_pretrained(folder, safe_serialization=True)"
        ) from err
    return built_from(nn.Module.to(model, dev).eval(), family, name, "local", **facts)


#: The older name, from when folders could only hold a UNet.
load_unet_folder = load_folder


def check_folder(path: str | Path, *, weights: bool = True) -> Path:
    """The model folder ``path`` names (itself, or its ``unet/`` or ``transformer/``), with its
    config.json checked and, with ``weights``, its safetensors checked against the config
    (headers only, no tensor is read). ModelLoadError naming the file and the fix otherwise.

    Example::

        >>> check_folder("stable-diffusion-v1-5")            # doctest: +SKIP
        PosixPath('stable-diffusion-v1-5/unet')
    """
    folder = _model_folder(Path(path).expanduser())
    config, family = _read_model_config(folder)
    if weights:
        check_weights(folder, config, denoiser_class(family))
    return folder


#: The older name, from when folders could only hold a UNet.
check_unet_folder = check_folder

#: Where a pipeline folder keeps its denoiser.
_PARTS = ("unet", "transformer")


def _model_folder(path: Path) -> Path:
    """The folder that holds the denoiser's config.json (path itself, path/unet or
    path/transformer)."""
    try:
        exists = path.exists()
    except OSError:  # e.g. a name too long for the file system
        exists = False
    if not exists:
        raise ModelLoadError(
            f"no folder at {show(path)}; pass a local diffusers model folder "
            f"(config.json + {_WEIGHTS_NAME}.safetensors) or a preset: {', '.join(PRESETS)}. "
            "shapetrace does not download from the Hugging Face Hub: fetch the model first"
        )
    if not path.is_dir():
        raise ModelLoadError(
            f"{path} is a file; pass the folder that holds config.json and "
            f"{_WEIGHTS_NAME}.safetensors (for a pipeline, the folder with unet/ or "
            "transformer/ inside)"
        )
    if (path / "config.json").is_file():
        return path
    for part in _PARTS:
        if (path / part / "config.json").is_file():
            return path / part
    raise ModelLoadError(
        f"no config.json in {path}; a diffusers model folder holds config.json and "
        f"{_WEIGHTS_NAME}.safetensors (a pipeline folder holds them in unet/ or transformer/). "
        "Write one with model.save_pretrained(folder, safe_serialization=True)"
    )


def _read_model_config(folder: Path) -> tuple[dict[str, Any], str]:
    """Parse config.json, check it describes a model shapetrace builds; return it and the
    family to build."""
    file = folder / "config.json"
    try:
        config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(
            f"{file} is not valid JSON ({err}); restore it from the model's source"
        ) from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file} holds a {type(config).__name__}, not a JSON object")
    spec = check_config(config, where=str(file), family="denoiser", default="UNet2DConditionModel")
    return config, spec.family
