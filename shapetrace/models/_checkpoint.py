"""Check a model folder's safetensors before diffusers reads them: present, not pickles,
readable, and complete for the config (diffusers would fill missing tensors with random values
and only warn)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from shapetrace.errors import ModelLoadError

__all__ = ["check_weights"]

_NAME = "diffusion_pytorch_model"
_PICKLES = ("*.bin", "*.ckpt", "*.pt", "*.pth")
_RESAVE = (
    "re-download it, or re-save the model with save_pretrained(folder, safe_serialization=True)"
)


def check_weights(folder: Path, config: dict[str, Any], cls: Any = None) -> str | None:
    """Raise ModelLoadError unless ``folder`` holds safetensors weights that cover the model
    ``cls`` (a diffusers class; default the UNet) builds from ``config``, with the right
    shapes; return the diffusers ``variant`` (e.g. ``"fp16"``) or None."""
    if cls is None:
        from diffusers import UNet2DConditionModel as cls
    files, variant = _weight_files(folder, cls.__name__)
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for file in files:
        for key, shape in _header(file).items():
            found[key] = (shape, file)
    expected = _expected_shapes(config, cls)
    missing = [k for k in expected if k not in found]
    foreign = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and found[k][0] != expected[k]]
    if wrong:  # the same names at other sizes: another model of the same family
        key = wrong[0]
        raise ModelLoadError(
            f"{found[key][1].name}: the weights and config.json come from different models: "
            f"{len(wrong)} tensors have other shapes than config.json needs (e.g. {key}: "
            f"{found[key][0]}, config.json needs {expected[key]}); put the config.json that "
            f"came with the weights beside them in {folder}"
        )
    if missing and foreign:  # not a cut-off file: a different model's weights
        raise ModelLoadError(
            f"{folder}: the weights and config.json come from different models: "
            f"{len(missing)} of {len(expected)} tensors config.json needs are missing (e.g. "
            f"{', '.join(missing[:2])}) and {len(foreign)} tensors in the weights are not part "
            f"of it (e.g. {', '.join(foreign[:2])}); put the config.json that came with the "
            "weights beside them"
        )
    if missing:
        names = ", ".join(f.name for f in files)
        raise ModelLoadError(
            f"{folder}: {names} is partial: {len(missing)} of {len(expected)} tensors the "
            f"config needs are missing (e.g. {', '.join(missing[:3])}); {_RESAVE}"
        )
    return variant


def _weight_files(folder: Path, cls: str) -> tuple[list[Path], str | None]:
    """The safetensors files diffusers will read, and the variant; refuse pickles."""
    single = folder / f"{_NAME}.safetensors"
    if single.is_file():
        return [single], None
    index = folder / f"{_NAME}.safetensors.index.json"
    if index.is_file():
        return _shards(index), None
    variants = sorted(p for p in folder.glob(f"{_NAME}.*.safetensors") if p.is_file())
    if len(variants) == 1:
        return variants, variants[0].name[len(_NAME) + 1 : -len(".safetensors")]
    if variants:
        raise ModelLoadError(
            f"{folder} holds several weight variants ({', '.join(p.name for p in variants)}); "
            "keep one, or load it yourself with from_pretrained(folder, variant=...)"
        )
    pickles = sorted(p.name for pattern in _PICKLES for p in folder.glob(pattern))
    if pickles:
        raise ModelLoadError(
            f"{folder} holds {', '.join(pickles)} but no {_NAME}.safetensors; shapetrace loads "
            "safetensors only (pickle files can run code when loaded). Convert it once, in a "
            f"place you trust: {cls}.from_pretrained(folder).save_pretrained("
            "folder, safe_serialization=True)"
        )
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        raise ModelLoadError(
            f"{folder} holds {', '.join(others)} but no {_NAME}.safetensors; a single-file "
            f"checkpoint needs converting first: {cls}.from_single_file(file)"
            ".save_pretrained(folder, safe_serialization=True)"
        )
    raise ModelLoadError(
        f"no weights in {folder}: expected {_NAME}.safetensors beside config.json; "
        "copy the weights there, or pass device='meta' to trace shapes without weights"
    )


def _shards(index: Path) -> list[Path]:
    """The shard files a sharded checkpoint's index names, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{index} is not a valid shard index ({err}); {_RESAVE}") from err
    files = [index.parent / name for name in names]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise ModelLoadError(
            f"{index} names {len(files)} shards but {', '.join(absent)} are missing; "
            f"the download stopped early: {_RESAVE}"
        )
    return files


def _header(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (reads no tensor data)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:  # SafetensorError is not importable as a stable type
        raise ModelLoadError(
            f"{file} is not a readable safetensors file ({err}); it is probably a partial "
            f"download or corrupt: {_RESAVE}"
        ) from err


def _expected_shapes(config: dict[str, Any], cls: Any) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor's shape for ``cls`` built from this config on meta (free)."""
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception as err:
        raise ModelLoadError(
            f"config.json does not build a {cls.__name__} ({type(err).__name__}: {err}); "
            "restore it from the model's source"
        ) from err
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
