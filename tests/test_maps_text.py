"""The text side: CLIP BPE tokens as SD 1.5 pads them, words, and the CLIP text encoder."""

from __future__ import annotations

import pytest
import torch

from shapetrace.errors import ModelLoadError
from shapetrace.maps.text import (
    END_OF_TEXT,
    START_OF_TEXT,
    build_text_encoder,
    encode,
    load_text_encoder,
    tokenize,
)


def test_the_prompt_becomes_sd15s_77_ids_padded_with_end_of_text():
    t = tokenize("a cat sitting on a mat")
    assert t.ids.shape == (77,) and t.ids.dtype == torch.long
    assert t.ids[:8].tolist() == [START_OF_TEXT, 320, 2368, 4919, 525, 320, 9063, END_OF_TEXT]
    assert t.ids[8:].tolist() == [END_OF_TEXT] * 69
    assert t.length == 8 and not t.truncated


def test_each_word_knows_its_token_indices_and_each_token_its_word():
    t = tokenize("a cat sitting on a mat")
    assert t.words == ("a", "cat", "sitting", "on", "a", "mat")
    assert t.word_tokens == ((1,), (2,), (3,), (4,), (5,), (6,))
    assert t.token_word[:8] == (-1, 0, 1, 2, 3, 4, 5, -1)
    assert [t.label(i) for i in (0, 2, 7, 8)] == ["<sot>", "cat", "<eot>", "<pad>"]


def test_a_word_split_into_several_tokens_maps_to_all_of_them():
    t = tokenize("Hello, astronaut")
    assert t.ids[1:4].tolist() == [3306, 267, 18376]
    assert t.word_tokens == ((1, 2), (3,))
    assert t.texts[1:4] == ("hello", ",", "astronaut")


def test_a_long_prompt_is_cut_to_77_with_end_of_text_last():
    t = tokenize(" ".join(["cat"] * 100))
    assert t.truncated and t.length == 77
    assert t.ids[0] == START_OF_TEXT and t.ids[76] == END_OF_TEXT
    assert t.word_tokens[74] == (75,) and t.word_tokens[75] == ()


def test_the_empty_prompt_is_start_and_end_of_text_only():
    t = tokenize("")
    assert t.length == 2 and t.words == ()
    assert t.ids[:3].tolist() == [START_OF_TEXT, END_OF_TEXT, END_OF_TEXT]


def test_a_seeded_text_encoder_is_the_same_twice_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_text_encoder("tiny", seed=3)
    b = build_text_encoder("tiny", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert not a.training
    out = encode(a, tokenize("a cat").ids)
    assert out.shape == (1, 77, 64)


def test_the_text_encoder_loads_from_a_local_safetensors_folder(tmp_path):
    made = build_text_encoder("tiny", seed=1)
    made.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    ids = torch.stack([tokenize("a cat").ids, tokenize("").ids])
    for where in (tmp_path / "text_encoder", tmp_path):  # its folder, or a pipeline folder
        loaded = load_text_encoder(where)
        torch.testing.assert_close(encode(loaded, ids), encode(made, ids))


def test_a_folder_without_safetensors_or_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"expected config\.json there or in text_encoder/"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights"):
        load_text_encoder(tmp_path)


def test_an_encoder_too_small_for_clip_ids_is_refused():
    from shapetrace.models import text_encoder_config

    config = {**text_encoder_config("tiny"), "vocab_size": 1000}
    with pytest.raises(ModelLoadError, match="vocab_size=1000"):
        build_text_encoder(config)
