"""Maps over the decoded image: a tiny VAE made here, diffusers' own post-processing as the
reference for decoding, and the ``shapetrace maps`` command on a pipeline folder with a VAE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from shapetrace.cli import main
from shapetrace.errors import InputShapeError, ModelLoadError
from shapetrace.maps.heatmap import heatmap_image
from shapetrace.maps.overlay import overlay_image, write_overlays
from shapetrace.maps.text import build_text_encoder, tokenize
from shapetrace.maps.vae import decode, find_vae, load_vae
from shapetrace.models import build_model

PROMPT = "a cat sitting on a mat"


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """SD's VAE layout (4 latent channels, factor 8) with 8 channels per block."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ).eval()


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A diffusers pipeline folder: tiny UNet, tiny CLIP text encoder, tiny VAE (safetensors)."""
    root = tmp_path_factory.mktemp("pipe")
    build_model("tiny", device="cpu", seed=0).module.save_pretrained(
        root / "unet", safe_serialization=True
    )
    encoder = build_text_encoder("tiny", seed=0)
    encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
    tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    return root


def test_decoding_equals_diffusers_vae_and_image_processor(pipeline_folder):
    vae = load_vae(pipeline_folder / "vae")
    latents = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sample = vae.decode(latents / vae.config.scaling_factor).sample
    expected = VaeImageProcessor(vae_scale_factor=8).postprocess(sample, output_type="pil")[0]
    got = decode(vae, latents)
    assert got.size == (96, 64)  # (W, H): 8x the latent
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_the_vae_is_found_beside_the_unet_or_given_and_absent_for_presets(pipeline_folder):
    assert find_vae(pipeline_folder) == pipeline_folder / "vae"
    assert find_vae(pipeline_folder / "unet") == pipeline_folder / "vae"
    assert find_vae("tiny") is None
    assert find_vae("tiny", pipeline_folder) == pipeline_folder / "vae"
    with pytest.raises(ModelLoadError, match=r"--vae /nonexistent: no such folder"):
        find_vae("tiny", "/nonexistent")


def test_a_vae_folder_without_safetensors_or_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match=r"no diffusion_pytorch_model\.safetensors .*\.bin"):
        load_vae(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"not a readable JSON config"):
        load_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ModelLoadError, match=r"describes a UNet2DModel, not an AutoencoderKL"):
        load_vae(tmp_path)


def test_latents_of_the_wrong_channels_are_refused():
    with pytest.raises(InputShapeError, match=r"latents \(1, 3, 8, 8\) do not fit this VAE"):
        decode(tiny_vae(), torch.zeros(1, 3, 8, 8))


def test_an_overlay_blends_the_heat_map_over_the_image():
    image = Image.fromarray(np.full((16, 24, 3), 100, dtype=np.uint8))
    values = torch.zeros(4, 6)
    values[0, 0] = 1.0  # attention in the top-left corner
    heat = np.asarray(heatmap_image(values, size=(16, 24)), dtype=np.float64)
    for alpha in (0.0, 0.3, 1.0):
        got = np.asarray(overlay_image(values, image, alpha=alpha), dtype=np.float64)
        expected = 100 * (1 - alpha) + heat * alpha
        assert got.shape == (16, 24, 3)
        assert np.abs(got - expected).max() <= 1.0  # pillow rounds to uint8
    top = np.asarray(overlay_image(values, image, alpha=1.0))
    assert top[0, 0, 0] > top[-1, -1, 0]  # bright yellow where the attention is, dark elsewhere
    with pytest.raises(InputShapeError, match=r"alpha=1\.5: the heat map's opacity"):
        overlay_image(values, image, alpha=1.5)


def test_overlays_are_written_per_word_with_a_grid_and_the_image(tmp_path):
    tokens = tokenize(PROMPT)
    maps = torch.rand(4, 4, 77, generator=torch.Generator().manual_seed(0))
    image = Image.new("RGB", (32, 32), "gray")
    files = write_overlays(tmp_path, maps, tokens, image)
    assert files["overlays"][:2] == ["overlay/01_a.png", "overlay/02_cat.png"]
    assert len(files["overlays"]) == 6
    for name in [files["image"], files["grid"], *files["overlays"]]:
        assert Image.open(tmp_path / name).format == "PNG"
    assert not list(tmp_path.rglob("*.tmp"))  # written under a temporary name, then renamed


def test_the_maps_command_draws_the_maps_over_the_decoded_image(pipeline_folder, tmp_path):
    out = tmp_path / "maps"
    argv = ["maps", "--prompt", PROMPT, "--model", str(pipeline_folder), "--steps", "2",
            "--height", "64", "--width", "64", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    overlay = summary["overlay"]
    assert overlay["vae"] == str(pipeline_folder / "vae")
    assert overlay["overlays"][1] == "overlay/02_cat.png" and len(overlay["overlays"]) == 6
    assert Image.open(out / "image.png").size == (64, 64)
    assert Image.open(out / "overlay" / "02_cat.png").size == (64, 64)
    assert (out / "02_cat.png").is_file()  # the plain heat maps are still there, beside them
    # the image is the run's final latents decoded: the same seed without capture gives them
    from shapetrace.maps.pipeline import build_chain, denoise

    run = denoise(build_chain(str(pipeline_folder)), PROMPT, steps=2, height=64, width=64)
    expected = decode(load_vae(pipeline_folder / "vae"), run.latents)
    assert np.array_equal(np.asarray(Image.open(out / "image.png")), np.asarray(expected))


def test_without_a_vae_the_command_writes_no_overlay(pipeline_folder, tmp_path):
    bare = tmp_path / "bare"
    (bare / "unet").mkdir(parents=True)
    for f in (pipeline_folder / "unet").iterdir():
        (bare / "unet" / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "maps"
    argv = ["maps", "--prompt", PROMPT, "--model", str(bare / "unet"), "--steps", "1",
            "--height", "64", "--width", "64", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    assert "overlay" not in json.loads((out / "summary.json").read_text())
    assert not (out / "overlay").exists() and not (out / "image.png").exists()
