"""The denoising chain, prompt to UNet, on the tiny preset."""

from __future__ import annotations

import pytest
import torch

from shapetrace.errors import InputShapeError, ModelLoadError
from shapetrace.maps import AttentionStore, aggregate
from shapetrace.maps.pipeline import build_chain, denoise, make_scheduler
from shapetrace.maps.text import build_text_encoder, encode, tokenize

PROMPT = "a cat sitting on a mat"


@pytest.fixture(scope="module")
def chain():
    return build_chain("tiny", seed=0)


def test_the_chain_is_tiny_unet_clip_text_encoder_and_sd15s_pndm_scheduler(chain):
    assert chain.unet.context_dim == 64
    assert chain.text_encoder.config.hidden_size == 64
    assert type(make_scheduler(chain.scheduler_config)).__name__ == "PNDMScheduler"
    assert "random weights" in chain.text_source


def test_capture_leaves_the_denoised_latents_bit_for_bit_the_same(chain):
    plain = denoise(chain, PROMPT, steps=2, height=64, width=64)
    store = AttentionStore.for_batch(1, guidance=True)
    captured = denoise(chain, PROMPT, steps=2, height=64, width=64, store=store)
    assert torch.equal(plain.latents, captured.latents)
    assert captured.latents.shape == (1, 4, 8, 8)
    assert store.steps == len(captured.timesteps)  # PNDM (PLMS) makes 3 UNet calls of 2 steps
    assert len(captured.layers) == 32 and sum(x.kind == "cross" for x in captured.layers) == 16


def test_guidance_runs_uncond_then_cond_and_the_store_keeps_the_cond_row(chain):
    store = AttentionStore.for_batch(1, guidance=True, keep="all")
    run = denoise(chain, PROMPT, steps=1, height=64, width=64, store=store)
    first = run.layers[1]  # down_blocks.0 attn2
    assert first.kind == "cross" and first.shape("context") == (2, 77, 64)
    assert [r.branch for r in store.kept_rows] == ["uncond", "cond"]
    assert not torch.equal(aggregate(store, 4, branch="uncond"), aggregate(store, 4))


def test_without_guidance_the_batch_is_one_conditional_row(chain):
    store = AttentionStore.for_batch(1, guidance=False)
    run = denoise(chain, PROMPT, steps=1, height=64, width=64, guidance=1.0, store=store)
    assert run.layers[1].shape("context") == (1, 77, 64)
    assert aggregate(store, 4).shape == (4, 4, 77)


def test_the_stores_memory_is_the_same_after_one_step_and_after_many(chain):
    sizes = []
    for steps in (1, 4):
        store = AttentionStore.for_batch(1, guidance=True)
        denoise(chain, PROMPT, steps=steps, height=64, width=64, store=store)
        sizes.append(store.nbytes())
    assert sizes[0] == sizes[1] > 0


def test_the_conditional_text_is_the_prompts_clip_embedding(chain):
    ids = tokenize(PROMPT).ids
    expected = encode(build_text_encoder("tiny", seed=0), ids)
    torch.testing.assert_close(encode(chain.text_encoder, ids), expected)


def test_zero_steps_and_bad_sizes_are_refused(chain):
    with pytest.raises(InputShapeError, match="steps must be >= 1, got 0"):
        denoise(chain, PROMPT, steps=0, height=64, width=64)
    with pytest.raises(InputShapeError, match="height 60 is not divisible by 8"):
        denoise(chain, PROMPT, steps=1, height=60, width=64)


def test_a_local_pipeline_folder_gives_its_unet_text_encoder_and_scheduler(chain, tmp_path):
    chain.unet.module.save_pretrained(tmp_path / "unet", safe_serialization=True)
    chain.text_encoder.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    local = build_chain(str(tmp_path))
    assert local.text_source.endswith("text_encoder")
    a = denoise(chain, PROMPT, steps=1, height=64, width=64)
    b = denoise(local, PROMPT, steps=1, height=64, width=64)
    assert torch.equal(a.latents, b.latents)
    sched = {**chain.scheduler_config, "_class_name": "DDIMScheduler"}
    make_scheduler(sched).save_config(tmp_path / "scheduler")
    assert build_chain(str(tmp_path)).scheduler_config["_class_name"] == "DDIMScheduler"


def test_a_text_encoder_of_the_wrong_width_is_refused(tmp_path):
    build_text_encoder("tiny").save_pretrained(tmp_path / "te", safe_serialization=True)
    with pytest.raises(ModelLoadError, match=r"hidden_size 64 does not match .* 768"):
        build_chain("sd15", text_encoder=tmp_path / "te", device="meta")

