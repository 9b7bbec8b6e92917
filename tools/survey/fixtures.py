"""Fixture folders for the bad-input survey."""

import json
import shutil
import sys
from pathlib import Path

import torch

from shapetrace.maps.text import build_text_encoder
from shapetrace.models import build_model, read_config

root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
tiny = root / "tiny"
if not tiny.exists():
    build_model("tiny", device="cpu").module.save_pretrained(tiny, safe_serialization=True)


def variant(name, config=None, weights=True, raw=None):
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    if raw is not None:
        (d / "config.json").write_text(raw)
    elif config is not None:
        (d / "config.json").write_text(json.dumps(config))
    if weights:
        shutil.copy(tiny / "diffusion_pytorch_model.safetensors", d)
    return d


cfg = json.loads((tiny / "config.json").read_text())
variant("empty_config", {})
variant(
    "missing_keys",
    {k: v for k, v in cfg.items() if k not in ("block_out_channels", "cross_attention_dim")},
)
variant("clip_config", read_config("sd15_text_encoder.json"))
variant("abc_channels", {**cfg, "block_out_channels": "abc"})
variant("neg_cross", {**cfg, "cross_attention_dim": -5})
variant("vae_class", {**cfg, "_class_name": "AutoencoderKL"})
variant("not_json", raw="{not json")
variant("list_json", raw="[1, 2]")
variant("sd15_config_tiny_weights", read_config("sd15_unet.json"))
variant("run[v2]", cfg)
variant("a[bold]b", cfg)
variant("types_mismatch_len", {**cfg, "down_block_types": cfg["down_block_types"][:2]})
variant("groups_bad", {**cfg, "norm_num_groups": 7})
variant("heads_zero", {**cfg, "attention_head_dim": 0})
variant("unknown_block", {**cfg, "down_block_types": ["Foo"] * 4})
d = variant("truncated", cfg)
w = d / "diffusion_pytorch_model.safetensors"
w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
d = variant("pickle_only", cfg, weights=False)
(d / "diffusion_pytorch_model.bin").write_bytes(b"x")
variant("no_weights", cfg, weights=False)
(root / "a_file.txt").write_text("hello")
# NaN weights
nan = root / "nan_weights"
if not nan.exists():
    m = build_model("tiny", device="cpu").module
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    m.save_pretrained(nan, safe_serialization=True)
# text encoder folder (tiny CLIP)
te = root / "tiny_te"
if not te.exists():
    build_text_encoder("tiny").save_pretrained(te, safe_serialization=True)
# a pipeline folder with unet + text_encoder
pipe = root / "pipe"
if not pipe.exists():
    shutil.copytree(tiny, pipe / "unet")
    shutil.copytree(te, pipe / "text_encoder")
# earlier maps run + foreign folder
(root / "foreign").mkdir(exist_ok=True)
(root / "foreign" / "notes.txt").write_text("mine")
print("ok")
