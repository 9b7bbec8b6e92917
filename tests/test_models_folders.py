"""Transformer folders (SD3, Flux, PixArt) load like UNet folders: a pipeline's
``transformer/`` or the folder itself, weights bit for bit, facts and layers read from the
config; broken ones are refused by name before anything is built. The published configs under
../shared load too (config only, on meta)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import shapetrace
from shapetrace.cli import main
from shapetrace.errors import ModelLoadError
from shapetrace.models import build_model, load_folder
from shapetrace.models.loading import check_folder
from tests import facts, tiny_models
from tests._folders import save_tiny
from tests._helpers import hook_count

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
WEIGHTS = "diffusion_pytorch_model.safetensors"

Facts = Callable[..., list[facts.Layer]]

#: family -> (tiny builder, the diffusers class, the layers its config gives at height x width)
FAMILIES: dict[str, tuple[Callable[[], tiny_models.Built], str, Facts]] = {
    "sd3": (tiny_models.sd3, "SD3Transformer2DModel", facts.sd3_layers),
    "flux": (tiny_models.flux, "FluxTransformer2DModel", facts.flux_layers),
    "pixart": (tiny_models.pixart, "PixArtTransformer2DModel", facts.pixart_layers),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(family, pipeline folder with the tiny model saved in transformer/, its config)."""
    family = request.param
    model, _args, _kwargs, _config = FAMILIES[family][0]()
    folder = tmp_path_factory.mktemp(family) / "pipe"
    model.save_pretrained(folder / "transformer", safe_serialization=True)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    return family, folder, config


def _native(config: dict[str, Any], family: str) -> tuple[int, int]:
    if family == "flux":  # Flux's config gives no size; its pipeline's default is 1024
        return 1024, 1024
    return config["sample_size"] * 8, config["sample_size"] * 8


def test_the_pipeline_folder_finds_its_transformer_and_loads_it_bit_for_bit(pipeline) -> None:
    family, folder, config = pipeline
    built = build_model(folder, device="cpu")
    saved = load_file(folder / "transformer" / WEIGHTS)
    state = built.module.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert type(built.module).__name__ == FAMILIES[family][1] == config["_class_name"]
    assert built.family == family and built.weights == "local"
    assert built.source == folder / "transformer"
    assert built.native == _native(config, family)
    assert check_folder(folder) == folder / "transformer"
    assert load_folder(folder / "transformer").family == family


def test_a_transformer_folder_traces_the_layers_its_config_gives(pipeline) -> None:
    family, folder, config = pipeline
    height, width = _native(config, family)
    journey = shapetrace.trace_model(str(folder))  # meta: config.json alone
    expected = FAMILIES[family][2](config, height, width, text=build_model(folder).context_tokens)
    assert [layer.name for layer in journey.layers] == [e.name for e in expected]
    got = [(x.kind, x.resolution, x.heads, x.head_dim) for x in journey.layers]
    assert got == [(e.kind, e.grid, e.heads, e.head_dim) for e in expected]
    for layer, fact in zip(journey.layers, expected):
        for stage, shape in fact.stage_shapes(batch=1).items():
            assert layer.shape(stage) == shape, (layer.name, stage)
    assert not journey.not_understood and not journey.violations


def test_the_cli_traces_a_transformer_folder_with_its_weights(
    pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    family, folder, config = pipeline
    out = tmp_path / "journey.json"
    code = main(["trace", "--model", str(folder), "--device", "cpu", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    journey = shapetrace.Journey.from_json(out.read_text())
    height, width = _native(config, family)
    assert (journey.height, journey.width) == (height, width)
    expected = FAMILIES[family][2](config, height, width, text=build_model(folder).context_tokens)
    assert len(journey.layers) == len(expected)


def test_maps_refuses_a_transformer_folder_by_name(pipeline, tmp_path: Path, capsys) -> None:
    _family, folder, _config = pipeline
    out = tmp_path / "maps"
    code = main(["maps", "--model", str(folder), "--prompt", "a cat", "--steps", "1",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "maps runs a diffusers UNet" in err and str(folder.name) in err
    assert "Traceback" not in err and not out.exists()  # refused before any work


def test_a_pixart_alpha_folder_that_names_transformer2dmodel_loads(tmp_path: Path) -> None:
    model, *_ = tiny_models.pixart()
    folder = tmp_path / "transformer"
    model.save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["_class_name"] = "Transformer2DModel"  # what PixArt-alpha's own folder says
    (folder / "config.json").write_text(json.dumps(config))
    built = build_model(folder, device="cpu")
    assert built.family == "pixart"
    assert torch.equal(built.module.state_dict()["pos_embed.proj.weight"],
                       model.state_dict()["pos_embed.proj.weight"])


def _edited(folder: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    copy = Path(shutil.copytree(folder / "transformer", tmp_path / "transformer"))
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


#: family -> (edit that breaks the config, words the refusal must hold)
BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "sd3": (lambda c: c.pop("joint_attention_dim"), ("joint_attention_dim is missing",)),
    "flux": (lambda c: c.update(axes_dims_rope=[4, 4, 4]), ("axes_dims_rope", "16")),
    "pixart": (lambda c: c.update(norm_type="layer_norm"), ("norm_type", "layer_norm")),
}


def test_a_broken_transformer_config_is_refused_by_name(pipeline, tmp_path: Path) -> None:
    family, folder, _config = pipeline
    edit, words = BROKEN[family]
    broken = _edited(folder, tmp_path, edit)
    for weights in ("meta", "local"):
        with pytest.raises(ModelLoadError) as err:
            build_model(broken, weights=weights, device="meta" if weights == "meta" else "cpu")
        message = str(err.value)
        assert str(broken / "config.json") in message
        assert all(w in message for w in words), message


def test_weights_of_another_model_are_refused_before_loading(pipeline, tmp_path: Path) -> None:
    _family, folder, _config = pipeline
    mixed = Path(shutil.copytree(folder / "transformer", tmp_path / "transformer"))
    save_tiny(tmp_path / "unet")
    shutil.copy(tmp_path / "unet" / WEIGHTS, mixed / WEIGHTS)  # a UNet's weights
    with pytest.raises(ModelLoadError, match="different model") as err:
        build_model(mixed, device="cpu")
    assert str(mixed) in str(err.value) and "config.json" in str(err.value)


@pytest.mark.parametrize("name", ["sd3", "flux-dev", "pixart-alpha"])
def test_the_published_pipeline_folders_build_on_meta(name: str) -> None:
    folder = SHARED / name
    if not folder.exists():
        pytest.skip(f"{folder} is not beside this checkout (CI places ../shared there)")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    built = build_model(folder)  # meta: config.json alone, no weights
    family = {"sd3": "sd3", "flux-dev": "flux", "pixart-alpha": "pixart"}[name]
    assert built.family == family
    n_params = sum(p.numel() for p in built.module.parameters())
    preset = build_model(family)
    assert n_params == sum(p.numel() for p in preset.module.parameters())
    assert built.native == _native(config, family) == preset.native
    assert hook_count(built.module) == 0


def test_a_folder_of_an_unsupported_class_names_what_is_supported(tmp_path: Path) -> None:
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "HunyuanDiT2DModel"}))
    with pytest.raises(ModelLoadError) as err:
        build_model(folder)
    message = str(err.value)
    assert "HunyuanDiT2DModel" in message
    for name in ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel"):
        assert name in message

