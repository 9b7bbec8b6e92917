"""Model presets and local folders: SD 1.5's facts on meta, the tiny UNet on CPU, seeded
inputs, and a clear ModelLoadError or InputShapeError for everything that cannot work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file, save_file

from shapetrace.errors import InputShapeError, ModelLoadError, SettingError
from shapetrace.models import (
    PRESETS,
    BuiltModel,
    build_model,
    load_unet_folder,
    read_config,
    scheduler_config,
    text_encoder_config,
    unet_config,
)
from tests._folders import BROKEN

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _attention_names(model: BuiltModel) -> list[str]:
    return [n for n, m in model.module.named_modules() if isinstance(m, Attention)]


def _state(model: BuiltModel) -> dict[str, torch.Tensor]:
    return model.module.state_dict()


def _same_weights(a: BuiltModel, b: BuiltModel) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny UNet saved the way diffusers saves one, with seeded random weights."""
    folder = tmp_path_factory.mktemp("checkpoints") / "tiny_unet"
    unet = build_model("tiny", device="cpu", seed=7).module
    assert isinstance(unet, UNet2DConditionModel)
    unet.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def copy_of(tiny_folder: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint that a test may break."""
    return Path(shutil.copytree(tiny_folder, tmp_path / "unet"))


def test_presets_are_sd15_tiny_and_reference_read_from_packaged_json() -> None:
    assert {"sd15", "tiny", "reference"} <= set(PRESETS)
    assert PRESETS["sd15"].unet == "sd15_unet.json"
    assert PRESETS["reference"].family == "reference"
    assert all(p.description for p in PRESETS.values())


def test_sd15_on_meta_has_859_520_964_parameters_and_no_storage() -> None:
    model = build_model("sd15")
    assert model.num_parameters() == 859_520_964
    assert model.device.type == "meta"
    assert (model.weights, model.family, model.context_dim, model.latent_channels) == (
        "meta",
        "unet",
        768,
        4,
    )
    assert not model.module.training


def test_sd15_has_16_self_and_16_cross_attention_layers_where_design_says() -> None:
    names = _attention_names(build_model("sd15"))
    assert len(names) == 32
    assert sum(n.endswith("attn1") for n in names) == 16
    cross = [n.split(".attentions.")[0] for n in names if n.endswith("attn2")]
    counts = {place: cross.count(place) for place in dict.fromkeys(cross)}
    assert counts == {
        "down_blocks.0": 2,
        "down_blocks.1": 2,
        "down_blocks.2": 2,
        "mid_block": 1,
        "up_blocks.1": 3,
        "up_blocks.2": 3,
        "up_blocks.3": 3,
    }
    module = build_model("sd15").module
    assert all(module.get_submodule(n).heads == 8 for n in names)


def test_sd15_forward_on_meta_gives_the_latent_shape_for_non_square_cfg_batches() -> None:
    model = build_model("sd15")
    args, kwargs = model.inputs(512, 768, batch=2)
    assert args[0].shape == (2, 4, 64, 96)
    assert args[1].shape == (2,) and args[1].dtype == torch.long
    assert kwargs["encoder_hidden_states"].shape == (2, 77, 768)
    assert model.run(512, 768, batch=2).shape == (2, 4, 64, 96)


def test_tiny_has_exactly_sd15s_attention_layer_names() -> None:
    assert _attention_names(build_model("tiny")) == _attention_names(build_model("sd15"))
    assert build_model("tiny").context_dim == 64


def test_tiny_runs_on_cpu_at_64_by_64_with_finite_output() -> None:
    model = build_model("tiny", device="cpu")
    assert model.weights == "random"
    out = model.run(64, 64, batch=2)
    assert out.shape == (2, 4, 8, 8)
    assert torch.isfinite(out).all()


def test_tiny_random_weights_depend_only_on_the_seed() -> None:
    a, b = build_model("tiny", device="cpu", seed=3), build_model("tiny", device="cpu", seed=3)
    assert _same_weights(a, b)
    assert not _same_weights(a, build_model("tiny", device="cpu", seed=4))


def test_building_with_a_seed_leaves_the_global_rng_as_it_was() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("tiny", device="cpu", seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_inputs_are_seeded_and_follow_the_models_dtype() -> None:
    model = build_model("tiny", device="cpu", dtype=torch.float64)
    (sample, t), kwargs = model.inputs(64, 128, seed=5)
    (again, t2), kwargs2 = model.inputs(64, 128, seed=5)
    assert sample.dtype == torch.float64 and sample.shape == (1, 4, 8, 16)
    assert torch.equal(sample, again) and torch.equal(t, t2)
    assert torch.equal(kwargs["encoder_hidden_states"], kwargs2["encoder_hidden_states"])
    assert not torch.equal(sample, model.inputs(64, 128, seed=6)[0][0])


def test_reference_preset_at_256_gives_seed_002s_feature_map() -> None:
    model = build_model("reference")
    (x, t, tokens), kwargs = model.inputs(256, 256)
    assert (x.shape, t.shape, tokens.shape, tokens.dtype) == (
        (1, 320, 32, 32),
        (1,),
        (1, 77),
        torch.long,
    )
    assert kwargs == {}
    assert model.run(256, 256).shape == (1, 320, 32, 32)
    assert (model.family, model.context_dim, model.latent_channels) == ("reference", 768, 320)


def test_reference_preset_runs_with_random_weights_on_cpu() -> None:
    model = build_model("reference", device="cpu")
    out = model.run(64, 96)
    assert out.shape == (1, 320, 8, 12)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("height", "width", "batch", "match"),
    [
        (500, 512, 1, r"height 500 is not divisible by 8; SD latents are height/8 — use 496 or"),
        (512, 770, 1, r"width 770 is not divisible by 8.*use 768 or 776"),
        (4, 512, 1, r"height 4 is not divisible by 8.*use 8$"),
        (0, 512, 1, r"height 0 must be positive"),
        (512, -8, 1, r"width -8 must be positive"),
        (512.0, 512, 1, r"height must be a whole number, got 512.0 \(float\)"),
        (512, 512, 0, r"batch 0 must be >= 1"),
        (512, 512, True, r"batch must be a whole number, got True"),
    ],
)
def test_sizes_that_cannot_work_raise_input_shape_error_with_the_fix(
    height: Any, width: Any, batch: Any, match: str
) -> None:
    model = build_model("sd15")
    with pytest.raises(InputShapeError, match=match):
        model.inputs(height, width, batch)


def test_latent_size_checks_the_image_size_first() -> None:
    assert build_model("sd15").latent_size(512, 768) == (64, 96)
    with pytest.raises(InputShapeError, match=r"width 100 is not divisible by 8"):
        build_model("sd15").latent_size(512, 100)


def test_text_encoder_configs_match_their_unets_context_width() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    for name in ("sd15", "tiny"):
        config = text_encoder_config(name)
        assert config["hidden_size"] == unet_config(name)["cross_attention_dim"]
        assert config["max_position_embeddings"] == 77
    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig(**text_encoder_config("sd15")))
    assert sum(p.numel() for p in clip.parameters()) == 123_060_480


def test_scheduler_config_is_sd15s_for_the_sd15_presets() -> None:
    expected = read_config("sd15_scheduler.json")
    assert all(scheduler_config(name) == expected for name in ("sd15", "tiny", "reference"))
    config = unet_config("sd15")
    config["cross_attention_dim"] = 1
    assert unet_config("sd15")["cross_attention_dim"] == 768


def test_reference_has_no_separate_text_encoder_config() -> None:
    with pytest.raises(ModelLoadError, match=r"preset 'reference' .* no text_encoder config"):
        text_encoder_config("reference")


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("sd99", {}, r"unknown model preset 'sd99'; choose one of .*sd15"),
        ("runwayml/stable-diffusion-v1-5", {}, r"no folder at .*does not download"),
        ("sd15", {"weights": "local", "device": "cpu"}, r"weights='local' needs a folder"),
        ("sd15", {"weights": "meta", "device": "cpu"}, r"weights='meta' .* needs device='meta'"),
        ("tiny", {"weights": "random"}, r"meta tensors hold no values"),
        ("tiny", {"weights": "pretrained"}, r"weights='pretrained'"),
    ],
)
def test_requests_that_cannot_be_built_raise_model_load_error(
    name: str, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ModelLoadError, match=match):
        build_model(name, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu"}, r"device tpu is not a device; use meta, cpu, cuda"),
        ({"device": "mps"}, r"device mps: shapetrace runs here on meta, cpu, cuda"),
        ({"device": "cpu:1"}, r"device cpu:1 has no index"),
        ({"device": 3}, r"device must be a str or torch.device, got 3 \(int\)"),
        ({"dtype": "float99"}, r"dtype float99 is not one of float32, float16"),
        ({"dtype": 3}, r"dtype must be a torch.dtype or its name, got 3"),
        ({"seed": -1}, r"seed -1 must be >= 0"),
        ({"seed": "a"}, r"seed must be a whole number, got 'a' \(str\)"),
    ],
)
def test_bad_settings_are_refused_before_building(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(SettingError, match=match):
        build_model("tiny", **kwargs)


def test_devices_and_dtypes_may_be_named_or_given_as_torch_objects() -> None:
    named = build_model("tiny", device="CPU", dtype="fp16")
    given = build_model("tiny", device=torch.device("cpu"), dtype=torch.float16)
    assert named.device == given.device == torch.device("cpu")
    assert named.dtype == given.dtype == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_refused_with_a_clear_message() -> None:
    with pytest.raises(SettingError, match=r"device cuda: torch sees no CUDA device"):
        build_model("tiny", device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_on_cuda_has_the_cpu_weights_inputs_and_output_for_a_seed() -> None:
    gpu, cpu = build_model("tiny", device="cuda", seed=2), build_model("tiny", device="cpu", seed=2)
    assert gpu.device.type == "cuda"
    assert all(torch.equal(v.cpu(), _state(cpu)[k]) for k, v in _state(gpu).items())
    (sample, _), _ = gpu.inputs(64, 96, batch=2, seed=1)
    assert sample.device.type == "cuda"
    assert torch.equal(sample.cpu(), cpu.inputs(64, 96, batch=2, seed=1)[0][0])
    torch.testing.assert_close(gpu.run(64, 96, 2).cpu(), cpu.run(64, 96, 2), rtol=1e-3, atol=1e-3)


def test_local_folder_round_trips_bit_identically(tiny_folder: Path) -> None:
    loaded = build_model(tiny_folder, device="cpu")
    assert (loaded.weights, loaded.source, loaded.name) == ("local", tiny_folder, "tiny_unet")
    assert _same_weights(loaded, build_model("tiny", device="cpu", seed=7))
    assert loaded.run(64, 64).shape == (1, 4, 8, 8)


def test_pipeline_folder_with_a_unet_subfolder_loads(tiny_folder: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_folder, tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    loaded = build_model(str(tmp_path / "pipe"), device="cpu")
    assert (loaded.name, loaded.source) == ("pipe", tmp_path / "pipe" / "unet")


def test_local_folder_on_meta_needs_only_config_json(copy_of: Path) -> None:
    (copy_of / WEIGHTS).unlink()
    model = build_model(copy_of)
    assert (model.weights, model.device.type, model.context_dim) == ("meta", "meta", 64)
    assert model.run(64, 64).shape == (1, 4, 8, 8)


def test_sdxl_style_text_time_config_gets_added_cond_kwargs(tmp_path: Path) -> None:
    config = unet_config("tiny") | {
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64],
        "attention_head_dim": [2, 4],
        "transformer_layers_per_block": [1, 2],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 64 + 6 * 8,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = build_model(tmp_path)
    _, kwargs = model.inputs(128, 64, batch=2)
    added = kwargs["added_cond_kwargs"]
    assert (added["text_embeds"].shape, added["time_ids"].shape) == ((2, 64), (2, 6))
    assert model.run(128, 64, batch=2).shape == (2, 4, 16, 8)


def _truncate(folder: Path) -> None:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


def _drop_tensors(folder: Path) -> None:
    tensors = load_file(folder / WEIGHTS)
    save_file(dict(list(tensors.items())[:10]), folder / WEIGHTS)


def _reshape_one(folder: Path) -> None:
    tensors = load_file(folder / WEIGHTS)
    key = "conv_in.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    save_file(tensors, folder / WEIGHTS)


def _bin_only(folder: Path) -> None:
    (folder / WEIGHTS).unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")


def _shard_missing(folder: Path) -> None:
    (folder / WEIGHTS).rename(folder / "diffusion_pytorch_model-00001-of-00002.safetensors")
    weight_map = {
        "conv_in.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
        "conv_in.bias": "diffusion_pytorch_model-00002-of-00002.safetensors",
    }
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))


BROKEN_FOLDERS = {
    "no config.json": (lambda f: (f / "config.json").unlink(), r"no config.json in .*unet"),
    "config is not json": (lambda f: (f / "config.json").write_text("{oops"), r"not valid JSON"),
    "config of a vae": (
        lambda f: (f / "config.json").write_text('{"_class_name": "AutoencoderKL"}'),
        r"describes a AutoencoderKL \(the VAE\), not a UNet or transformer shapetrace traces",
    ),
    "no weights at all": (lambda f: (f / WEIGHTS).unlink(), r"no weights in .*device='meta'"),
    "bin only": (_bin_only, r"diffusion_pytorch_model.bin .* loads safetensors only"),
    "other safetensors": (
        lambda f: (f / WEIGHTS).rename(f / "model.safetensors"),
        r"holds model.safetensors .*from_single_file",
    ),
    "truncated": (_truncate, r"diffusion_pytorch_model.safetensors is not a readable .*partial"),
    "garbage": (
        lambda f: (f / WEIGHTS).write_bytes(b"\x08" + b"\0" * 7 + b"{}"),
        r"is not a readable safetensors file",
    ),
    "missing tensors": (_drop_tensors, r"is partial: \d+ of \d+ tensors .* are missing"),
    "wrong shape": (_reshape_one, r"conv_in.weight: \(33, 4, 3, 3\), config.json needs"),
    "missing shard": (_shard_missing, r"names 2 shards but .*00002-of-00002.* missing"),
}


@pytest.mark.parametrize("case", list(BROKEN_FOLDERS))
def test_broken_local_folders_raise_model_load_error_naming_file_and_fix(
    copy_of: Path, case: str
) -> None:
    breaks, match = BROKEN_FOLDERS[case]
    breaks(copy_of)
    with pytest.raises(ModelLoadError, match=match):
        load_unet_folder(copy_of, device="cpu")


def test_a_path_to_a_file_is_refused(tiny_folder: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"is a file; pass the folder"):
        build_model(tiny_folder / WEIGHTS, device="cpu")


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no folder at .*nowhere"):
        build_model(tmp_path / "nowhere", device="cpu")


@pytest.mark.slow
def test_sd15_with_random_weights_runs_on_cpu() -> None:
    model = build_model("sd15", device="cpu", seed=0)
    assert model.num_parameters() == 859_520_964
    out = model.run(64, 64)
    assert out.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()


# --- config.json checked per model class before anything is built ----------------------------

#: The key fields of real UNet configs (SD 2.1's and SDXL's as published), which must pass.
REAL_CONFIGS = {
    "sd21": {
        "_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "sample_size": 96,
    },
    "sdxl": {
        "_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4,
        "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
        "transformer_layers_per_block": [1, 2, 10], "num_attention_heads": None,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", ["sd15", "tiny", "sd21", "sdxl"])
def test_real_unet_configs_pass_the_config_check(name: str) -> None:
    from shapetrace.models import unet_config
    from shapetrace.models._config_checks import check_config

    config = REAL_CONFIGS[name] if name in REAL_CONFIGS else unet_config(name)
    assert check_config(config, where=name).name == "UNet2DConditionModel"


def test_a_text_encoder_config_passes_as_a_text_encoder_only() -> None:
    from shapetrace.models import text_encoder_config
    from shapetrace.models._config_checks import check_config

    config = text_encoder_config("sd15")
    assert check_config(config, where="te", family="text_encoder").name == "CLIPTextModel"
    with pytest.raises(ModelLoadError, match=r"te describes a CLIPTextModel .*not a UNet2DCond"):
        check_config(config, where="te")


def test_sdxl_time_embeddings_need_their_widths() -> None:
    from shapetrace.models._config_checks import check_config

    config = {**REAL_CONFIGS["sdxl"], "addition_time_embed_dim": None}
    with pytest.raises(ModelLoadError, match=r"'text_time' \(SDXL\) needs addition_time_embed"):
        check_config(config, where="sdxl")


@pytest.fixture(scope="module")
def plain_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests._folders import save_tiny

    return save_tiny(tmp_path_factory.mktemp("plain") / "tiny_unet")


#: The broken folders whose config.json is the problem (the rest break their weights).
CONFIG_CASES = [
    c for c in BROKEN
    if c not in ("SD 1.5's config beside tiny weights", "weights cut off", "a pickle only",
                 "no weights")
]  # fmt: skip


@pytest.mark.parametrize("case", CONFIG_CASES)
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_a_broken_config_is_refused_by_name_before_building(
    plain_tiny: Path, tmp_path: Path, case: str, device: str
) -> None:
    make, words = BROKEN[case]
    make(plain_tiny, tmp_path / "unet")
    with pytest.raises(ModelLoadError) as raised:
        build_model(tmp_path / "unet", device=device)
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_loading_a_folder_prints_nothing(tiny_folder: Path, capfd: pytest.CaptureFixture) -> None:
    build_model(tiny_folder, device="cpu")
    captured = capfd.readouterr()
    assert "accelerate" not in captured.err and captured.out == ""


def test_check_unet_folder_finds_the_unet_of_a_pipeline(tiny_folder: Path, tmp_path: Path) -> None:
    from shapetrace.models.loading import check_unet_folder

    shutil.copytree(tiny_folder, tmp_path / "pipe" / "unet")
    assert check_unet_folder(tmp_path / "pipe") == tmp_path / "pipe" / "unet"
