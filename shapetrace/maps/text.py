"""The text side of the chain: CLIP BPE tokens as SD 1.5 sees them, and the CLIP text encoder.

A prompt becomes 77 token ids: start-of-text (49406), the BPE tokens of the words, end-of-text
(49407), then padding with end-of-text again, as SD 1.5's tokenizer pads. Each token index is
mapped back to the prompt word it came from, so per-token maps can be named by words:

>>> t = tokenize("a cat sitting on a mat")
>>> t.ids[:8].tolist()
[49406, 320, 2368, 4919, 525, 320, 9063, 49407]
>>> t.word_tokens[1]          # "cat" is token index 2 of 77
(2,)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from shapetrace.errors import InputShapeError, ModelLoadError

__all__ = [
    "END_OF_TEXT",
    "MAX_TOKENS",
    "START_OF_TEXT",
    "PromptTokens",
    "build_text_encoder",
    "encode",
    "load_text_encoder",
    "tokenize",
]

START_OF_TEXT = 49406
END_OF_TEXT = 49407
MAX_TOKENS = 77


@lru_cache(maxsize=1)
def _bpe() -> Any:
    """The CLIP BPE tokenizer (its vocabulary ships with the package, no download)."""
    from instant_clip_tokenizer import Tokenizer

    return Tokenizer()


@dataclass(frozen=True)
class PromptTokens:
    """A tokenized prompt: 77 ids, the text of each token and which word each came from.

    ``ids`` is a (77,) long tensor. ``words[i]`` is the i-th whitespace-separated word of the
    prompt and ``word_tokens[i]`` the token indices (into the 77) it became; ``token_word[j]``
    is the word index of token j, or -1 for start-of-text, end-of-text and padding.
    ``length`` counts start-of-text, the word tokens and end-of-text (8 for
    "a cat sitting on a mat"); ``truncated`` says words were cut to fit 77.
    """

    prompt: str
    ids: torch.Tensor
    texts: tuple[str, ...]
    words: tuple[str, ...]
    word_tokens: tuple[tuple[int, ...], ...]
    token_word: tuple[int, ...]
    length: int
    truncated: bool

    def label(self, index: int) -> str:
        """A readable name for token ``index``: the word, or <sot>, <eot>, <pad>."""
        if index == 0:
            return "<sot>"
        if index == self.length - 1:
            return "<eot>"
        if index >= self.length:
            return "<pad>"
        return self.texts[index]


def tokenize(prompt: str, *, max_length: int = MAX_TOKENS) -> PromptTokens:
    """Tokenize ``prompt`` as SD 1.5 does: [sot, tokens..., eot, eot-padding] of ``max_length``.

    Words are split on whitespace and encoded one by one, so each token knows its word; the
    concatenation is checked against the tokenizer's encoding of the whole prompt.

    >>> tokenize("a cat").ids.shape
    torch.Size([77])
    """
    if max_length < 2:
        raise InputShapeError(f"max_length must hold start and end of text, got {max_length}")
    bpe = _bpe()
    words = prompt.split()
    per_word = [list(bpe.encode(w)) for w in words]
    flat = [i for ids in per_word for i in ids]
    whole = list(bpe.encode(prompt))
    if flat != whole:  # pragma: no cover - CLIP's pre-tokenizer splits on whitespace
        raise InputShapeError(
            f"word-by-word tokens {flat} differ from the prompt's tokens {whole}; "
            "cannot map tokens to words for this prompt"
        )
    room = max_length - 2
    truncated = len(flat) > room
    ids = [START_OF_TEXT]
    texts = ["<sot>"]
    token_word = [-1]
    word_tokens: list[tuple[int, ...]] = []
    for w, wids in enumerate(per_word):
        taken: list[int] = []
        for tid in wids:
            if len(ids) - 1 >= room:
                break
            taken.append(len(ids))
            ids.append(tid)
            texts.append(bpe.decode([tid]).strip())
            token_word.append(w)
        word_tokens.append(tuple(taken))
    ids.append(END_OF_TEXT)
    texts.append("<eot>")
    token_word.append(-1)
    length = len(ids)
    pad = max_length - length
    ids += [END_OF_TEXT] * pad
    texts += ["<pad>"] * pad
    token_word += [-1] * pad
    return PromptTokens(
        prompt=prompt,
        ids=torch.tensor(ids, dtype=torch.long),
        texts=tuple(texts),
        words=tuple(words),
        word_tokens=tuple(word_tokens),
        token_word=tuple(token_word),
        length=length,
        truncated=truncated,
    )


def build_text_encoder(
    config: dict[str, Any] | str = "sd15", *, seed: int = 0, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """A ``CLIPTextModel`` from a config (dict or preset name) with seeded random weights.

    The global RNG is left as it was. ``build_text_encoder("tiny")`` gives (B, 77, 64) outputs.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    from shapetrace.models import text_encoder_config

    cfg = text_encoder_config(config) if isinstance(config, str) else dict(config)
    _check_vocab(cfg, where="config")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: torch.nn.Module = CLIPTextModel(CLIPTextConfig(**cfg))
    return model.to(device).eval()


def load_text_encoder(path: str | Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A ``CLIPTextModel`` with weights from a local folder, safetensors only.

    ``path`` is either the text encoder's folder (``config.json`` + ``model.safetensors``) or a
    diffusers pipeline folder holding it as ``text_encoder/`` (SD 1.5's layout).
    """
    from transformers import CLIPTextModel

    folder = Path(path)
    if (folder / "text_encoder").is_dir():
        folder = folder / "text_encoder"
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"no text encoder at {str(path)!r}: expected config.json there or in text_encoder/"
        )
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"text encoder folder {str(folder)!r} has no *.safetensors weights; convert "
            "pytorch_model.bin with safetensors (pickle files are not loaded)"
        )
    try:
        loaded = CLIPTextModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the text encoder in {str(folder)!r}: {err}") from err
    _check_vocab(loaded.config.to_dict(), where=str(folder))
    model: torch.nn.Module = loaded
    return model.to(device).eval()


def _check_vocab(cfg: dict[str, Any], *, where: str) -> None:
    """The encoder must take CLIP BPE ids (vocab 49408) and 77 positions."""
    vocab = int(cfg.get("vocab_size", 0))
    positions = int(cfg.get("max_position_embeddings", 0))
    if vocab <= END_OF_TEXT or positions < MAX_TOKENS:
        raise ModelLoadError(
            f"text encoder ({where}) has vocab_size={vocab}, max_position_embeddings={positions}; "
            f"CLIP BPE ids need vocab_size >= {END_OF_TEXT + 1} and 77 positions"
        )


@torch.no_grad()
def encode(encoder: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Text embeddings as SD 1.5 uses them: the encoder's last hidden state.

    ``ids`` (B, 77) long -> (B, 77, hidden_size), e.g. (2, 77, 768) for SD 1.5 under CFG.
    """
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    param = next(encoder.parameters())
    out = encoder(input_ids=ids.to(param.device))
    return out.last_hidden_state
