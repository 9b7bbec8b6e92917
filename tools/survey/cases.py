"""The bad-input survey: (id, argv | python code, expected rc, substrings the last line must hold).

FX is the fixtures folder made by fixtures.py (SURVEY_DIR/fx)."""

import os

FX = os.path.join(os.environ.get("SURVEY_DIR", "/tmp/survey"), "fx")
T = ["trace"]
M = ["maps", "--prompt", "a cat", "--model", "tiny", "--steps", "1", "--quiet"]
CASES = []


def c(id, argv, rc=2, *must, py=None, pre=None):
    CASES.append(dict(id=id, argv=argv, rc=rc, must=list(must), py=py, pre=pre))


# ---- trace: sizes, batch
for v in ["500", "0", "-8", "abc", "1e3", "5.0", "", "99999992"]:
    c(f"trace --height {v!r}", [*T, "--height", v], 2, "--height")
for v in ["7", "0", "wide", "1000000000000000000000"]:
    c(f"trace --width {v!r}", [*T, "--width", v], 2, "--width")
for v in ["0", "-1", "2.5", "1000000000"]:
    c(f"trace --batch {v}", [*T, "--batch", v], 2, "--batch")
c("trace --batch 1e9 cpu", [*T, "--batch", "1000000000", "--device", "cpu"], 2, "--batch")
c(
    "trace --batch 64 sd15 cpu 512",
    [*T, "--batch", "64", "--device", "cpu", "--processor", "AttnProcessor"],
    2,
    "--batch",
)
c(
    "trace --height 8192 cpu sd15",
    [*T, "--height", "8192", "--width", "8192", "--device", "cpu"],
    2,
    "memory",
)
# ---- device / dtype / processor
for v in ["tpu", "cuda", "cuda:1", "CPU", "", "mps", "cuda:-1"]:
    c(f"trace --device {v!r}", [*T, "--device", v], 2, "--device")
c("trace --dtype float64", [*T, "--dtype", "float64"], 2, "--dtype")
c("trace --dtype fp16", [*T, "--dtype", "fp16"], 2, "--dtype")
c(
    "trace --processor on reference",
    [*T, "--model", "reference", "--processor", "AttnProcessor"],
    2,
    "--processor",
)
c("trace --processor XFormers", [*T, "--processor", "XFormers"], 2, "--processor")
# ---- model
c("trace --model sd99", [*T, "--model", "sd99"], 2, "sd99")
c("trace --model ''", [*T, "--model", ""], 2, "--model")
c("trace --model missing path", [*T, "--model", "/nonexistent/unet"], 2, "/nonexistent/unet")
c("trace --model a file", [*T, "--model", f"{FX}/a_file.txt"], 2, "a_file.txt")
for name, must in [
    ("empty_config", "block_out_channels"),
    ("missing_keys", "block_out_channels"),
    ("clip_config", "CLIPTextModel"),
    ("abc_channels", "block_out_channels"),
    ("neg_cross", "cross_attention_dim"),
    ("vae_class", "AutoencoderKL"),
    ("not_json", "JSON"),
    ("list_json", "JSON object"),
    ("sd15_config_tiny_weights", "different model"),
    ("types_mismatch_len", "down_block_types"),
    ("groups_bad", "norm_num_groups"),
    ("heads_zero", "attention_head_dim"),
    ("unknown_block", "Foo"),
    ("truncated", "safetensors"),
    ("pickle_only", "safetensors"),
    ("no_weights", "weights"),
]:
    c(
        f"trace folder {name}",
        [*T, "--model", f"{FX}/{name}", "--device", "cpu", "--height", "64", "--width", "64"],
        2,
        must,
    )
    if name in ("empty_config", "clip_config", "abc_channels", "vae_class"):
        c(f"trace folder {name} on meta", [*T, "--model", f"{FX}/{name}"], 2, must)
c("trace folder run[v2]", [*T, "--model", f"{FX}/run[v2]", "--height", "64", "--width", "64"], 0)
c("trace folder a[bold]b", [*T, "--model", f"{FX}/a[bold]b", "--height", "64", "--width", "64"], 0)
c("trace --model 10000 chars", [*T, "--model", "x" * 10000], 2, "--model")
c("trace --model 10000 chars path", [*T, "--model", "/" + "y" * 10000], 2, "--model")
c(
    "trace nan weights exits 1",
    [*T, "--model", f"{FX}/nan_weights", "--device", "cpu", "--height", "64", "--width", "64"],
    1,
    "check",
)
c(
    "trace nan weights --exit-zero",
    [*T, "--model", f"{FX}/nan_weights", "--device", "cpu", "--height", "64", "--width", "64", "--exit-zero"],
    0,
)
c(
    "trace tiny folder fine",
    [*T, "--model", f"{FX}/tiny", "--device", "cpu", "--height", "64", "--width", "64"],
    0,
)
c("trace pipeline folder fine", [*T, "--model", f"{FX}/pipe", "--height", "64", "--width", "64"], 0)
# ---- outputs
c("trace --json dir", [*T, "--json", "/tmp"], 2, "--json")
c("trace --json unwritable", [*T, "--json", "/proc/x.json"], 2, "--json")
c("trace --json missing parent", [*T, "--json", "nowhere/x.json"], 2, "--json")
c("trace --json parent is file", [*T, "--json", f"{FX}/a_file.txt/x.json"], 2, "--json")
c("trace --json same as --markdown", [*T, "--json", "x", "--markdown", "x"], 2, "--markdown")
c("trace --json same via ./", [*T, "--json", "x", "--markdown", "./x"], 2, "--markdown")
c("trace both stdout", [*T, "--json", "-", "--markdown", "-"], 2, "stdout")
c("trace --json name too long", [*T, "--json", "n" * 300 + ".json"], 2, "--json")
c("trace --markdown dir", [*T, "--markdown", "."], 2, "--markdown")
c("trace --json markup path", [*T, "--json", "[bold]x[/].json"], 2, "--json")
c("trace --json empty", [*T, "--json", ""], 2, "--json")
# ---- layers / kinds
c("trace --layer nope", [*T, "--layer", "attn9"], 2, "attn9")
c("trace --layer ''", [*T, "--layer", ""], 2, "--layer")
c("trace --layer huge", [*T, "--layer", "z" * 10000], 2, "--layer")
c("trace --layer markup", [*T, "--layer", "[red]x"], 2, "[red]x")
c("trace --kind both", [*T, "--kind", "both"], 2, "--kind")
c("trace --all --layer", [*T, "--all", "--layer", "x"], 2, "--layer")
c(
    "trace --layer self with --kind cross",
    [*T, "--layer", "down.0.0.attn1", "--kind", "cross"],
    2,
    "--kind",
)
# ---- misc CLI
c("no subcommand", [], 2, "COMMAND")
c("unknown subcommand", ["paint"], 2, "paint")
c("unknown flag", [*T, "--heigth", "256"], 2, "--heigth")
c("--version", ["--version"], 0)
c("trace reference fine", [*T, "--model", "reference", "--height", "256", "--width", "256"], 0)
# ---- maps: steps
for v in ["0", "-1", "10000", "1001", "abc", "2.5"]:
    c(
        f"maps --steps {v}",
        ["maps", "--prompt", "a cat", "--model", "tiny", "--quiet", "--out", "o", "--steps", v],
        2,
        "--steps",
    )
# ---- maps: sizes
for flag in ["--height", "--width"]:
    for v in ["0", "7", "500", "-64", "abc", "100000"]:
        c(f"maps {flag} {v}", [*M, "--out", "o", flag, v], 2, flag)
c(
    "maps 8192 sd15 memory",
    [
        "maps",
        "--prompt",
        "a cat",
        "--model",
        "sd15",
        "--height",
        "8192",
        "--width",
        "8192",
        "--out",
        "o",
    ],
    2,
    "memory",
)
# ---- maps: guidance
for v in ["nan", "inf", "-inf", "-1", "1e39", "abc"]:
    c(f"maps --guidance {v}", [*M, "--out", "o", "--guidance", v], 2, "--guidance")
# ---- maps: prompt
c(
    "maps --prompt ''",
    ["maps", "--prompt", "", "--model", "tiny", "--steps", "1", "--quiet", "--out", "o"],
    2,
    "--prompt",
)
c(
    "maps --prompt spaces",
    ["maps", "--prompt", "   ", "--model", "tiny", "--steps", "1", "--quiet", "--out", "o"],
    2,
    "--prompt",
)
c(
    "maps 270-char word",
    [
        "maps",
        "--prompt",
        "a " + "w" * 270,
        "--model",
        "tiny",
        "--steps",
        "1",
        "--quiet",
        "--out",
        "o",
    ],
    0,
)
c(
    "maps 10000-char prompt",
    ["maps", "--prompt", "q" * 10000, "--model", "tiny", "--steps", "1", "--quiet", "--out", "o"],
    2,
    "--truncate",
)
c(
    "maps markup prompt",
    [
        "maps",
        "--prompt",
        "[bold]a[/] cat a[/]b",
        "--model",
        "tiny",
        "--steps",
        "1",
        "--quiet",
        "--out",
        "o",
    ],
    0,
)
c(
    "maps newline prompt",
    ["maps", "--prompt", "a\ncat", "--model", "tiny", "--steps", "1", "--quiet", "--out", "o"],
    0,
)
c(
    "maps emoji prompt",
    [
        "maps",
        "--prompt",
        "a 🐱 on a mat",
        "--model",
        "tiny",
        "--steps",
        "1",
        "--quiet",
        "--out",
        "o",
    ],
    0,
)
c(
    "maps only punctuation",
    ["maps", "--prompt", "!!!", "--model", "tiny", "--steps", "1", "--quiet", "--out", "o"],
    0,
)
c(
    "maps 80 tokens",
    [
        "maps",
        "--prompt",
        " ".join(f"cat{i}" for i in range(60)),
        "--model",
        "tiny",
        "--steps",
        "1",
        "--quiet",
        "--out",
        "o",
    ],
    2,
    "--truncate",
)
# ---- maps: seed, res, device
for v in ["-1", str(2**70), "abc"]:
    c(f"maps --seed {v}", [*M, "--out", "o", "--seed", v], 2, "--seed")
for v in ["0", "abc", "3", "16x", "x16", "0x16", "2x2x2"]:
    c(f"maps --res {v}", [*M, "--out", "o", "--res", v], 2, "--res")
for v in ["tpu", "cuda", "meta", ""]:
    c(f"maps --device {v!r}", [*M, "--out", "o", "--device", v], 2, "--device")
# ---- maps: out
c("maps --out file", [*M, "--out", f"{FX}/a_file.txt"], 2, "--out")
c("maps --out unwritable", [*M, "--out", "/proc/maps_out"], 2, "--out")
c("maps --out parent is file", [*M, "--out", f"{FX}/a_file.txt/sub"], 2, "--out")
c("maps --out foreign folder", [*M, "--out", f"{FX}/foreign"], 2, "--out")
c("maps --out .", [*M, "--out", "."], 2, "--out")
c("maps --out ''", [*M, "--out", ""], 2, "--out")
c("maps --out name too long", [*M, "--out", "n" * 300], 2, "--out")
c("maps --out markup", [*M, "--out", "run[v2]"], 0)
c("maps --out nested new", [*M, "--out", "a/b/c"], 0)
c(
    "maps rerun replaces",
    [*M, "--out", "o"],
    0,
    pre=[*M[:2], "a cat sitting on a mat", *M[3:], "--out", "o"],
)
# ---- maps: model / text encoder
c(
    "maps --model reference",
    ["maps", "--prompt", "a cat", "--model", "reference", "--out", "o"],
    2,
    "--model",
)
c("maps --model sd99", ["maps", "--prompt", "a cat", "--model", "sd99", "--out", "o"], 2, "sd99")
for name, must in [
    ("empty_config", "block_out_channels"),
    ("clip_config", "CLIPTextModel"),
    ("abc_channels", "block_out_channels"),
    ("vae_class", "AutoencoderKL"),
]:
    c(
        f"maps folder {name}",
        [
            "maps",
            "--prompt",
            "a cat",
            "--model",
            f"{FX}/{name}",
            "--steps",
            "1",
            "--quiet",
            "--out",
            "o",
        ],
        2,
        must,
    )
c(
    "maps folder tiny (no te)",
    ["maps", "--prompt", "a cat", "--model", f"{FX}/tiny", "--steps", "1", "--quiet", "--out", "o"],
    0,
)
c(
    "maps folder tiny + te",
    [
        "maps",
        "--prompt",
        "a cat",
        "--model",
        f"{FX}/tiny",
        "--text-encoder",
        f"{FX}/tiny_te",
        "--steps",
        "1",
        "--quiet",
        "--out",
        "o",
    ],
    0,
)
c(
    "maps pipe folder",
    ["maps", "--prompt", "a cat", "--model", f"{FX}/pipe", "--steps", "1", "--quiet", "--out", "o"],
    0,
)
c(
    "maps run[v2] folder",
    [
        "maps",
        "--prompt",
        "a cat",
        "--model",
        f"{FX}/run[v2]",
        "--text-encoder",
        f"{FX}/tiny_te",
        "--steps",
        "1",
        "--quiet",
        "--out",
        "o",
    ],
    0,
)
c("maps --text-encoder missing", [*M, "--out", "o", "--text-encoder", "/nope"], 2, "--text-encoder")
c(
    "maps --text-encoder unet folder",
    [*M, "--out", "o", "--text-encoder", f"{FX}/tiny"],
    2,
    "--text-encoder",
)
c(
    "maps --text-encoder sd15 width",
    [*M, "--out", "o", "--text-encoder", f"{FX}/clip_config"],
    2,
    "--text-encoder",
)
c(
    "maps nan weights",
    [
        "maps",
        "--prompt",
        "a cat",
        "--model",
        f"{FX}/nan_weights",
        "--text-encoder",
        f"{FX}/tiny_te",
        "--steps",
        "1",
        "--quiet",
        "--out",
        "o",
    ],
    1,
    "finite",
)
c("maps missing --out", ["maps", "--prompt", "a cat"], 2, "--out")
c("maps missing --prompt", ["maps", "--out", "o"], 2, "--prompt")
c("maps --all-res fine", [*M, "--out", "o", "--all-res"], 0)
# ---- API
PY = "import torch, shapetrace\nfrom shapetrace.models import build_model\n"


def api(id, code, must):
    c("api " + id, None, 0, must, py=PY + code)


api(
    "trace_model torch.device",
    "shapetrace.trace_model('tiny', height=64, width=64, device=torch.device('cpu'))",
    "",
)
api(
    "trace_model dtype name",
    "shapetrace.trace_model('tiny', height=64, width=64, dtype='float16')",
    "",
)
api(
    "trace_model dtype bad",
    "shapetrace.trace_model('tiny', height=64, width=64, dtype='float99')",
    "dtype",
)
api("build_model dtype name", "build_model('tiny', dtype='float16')", "")
api("build_model dtype int", "build_model('tiny', dtype=3)", "dtype")
api("build_model device object", "build_model('tiny', device=torch.device('cpu'))", "")
api("build_model weights bad", "build_model('tiny', weights='foo')", "weights")
api("build_model seed str", "build_model('tiny', device='cpu', seed='a')", "seed")
api("build_model seed huge", "build_model('tiny', device='cpu', seed=2**70)", "seed")
api("build_model model int", "build_model(3)", "3")
api(
    "store places middle",
    "from shapetrace.maps import AttentionStore\nAttentionStore(places=['middle'])",
    "middle",
)
api(
    "store resolutions 0",
    "from shapetrace.maps import AttentionStore\nAttentionStore(resolutions=[0, -16])",
    "resolution",
)
api(
    "tracer twice",
    "from shapetrace.reference import CrossAttention\nm = CrossAttention(16, 8, num_heads=2)\nt = shapetrace.trace(m)\nwith t: m(torch.randn(1,4,16), torch.randn(1,3,8))\nwith t: m(torch.randn(1,4,16), torch.randn(1,3,8))",
    "again",
)
api(
    "probe object",
    "from shapetrace.reference import CrossAttention\nm = CrossAttention(16, 8, num_heads=2)\nwith shapetrace.trace(m, probes=[object()]): m(torch.randn(1,4,16), torch.randn(1,3,8))",
    "probe",
)
api(
    "write_outputs to a file",
    "from shapetrace.maps.export import write_outputs\nfrom shapetrace.maps.text import tokenize\nwrite_outputs('"
    + FX
    + "/a_file.txt', torch.rand(2,2,77), tokenize('a cat'), image_size=(16,16))",
    "a_file",
)
api(
    "tokenize empty",
    "from shapetrace.maps.text import tokenize\nt = tokenize('')\nprint(t.length)",
    "",
)
api(
    "load_unet_folder empty config",
    "from shapetrace.models import load_unet_folder\nload_unet_folder('" + FX + "/empty_config')",
    "block_out_channels",
)
api("trace_model device cuda:x", "shapetrace.trace_model('tiny', device='cuda:x')", "device")
api("trace_model height float", "shapetrace.trace_model('tiny', height=64.0, width=64)", "height")
api(
    "trace_model batch True",
    "shapetrace.trace_model('tiny', height=64, width=64, batch=True)",
    "batch",
)
api("build_model device tpu", "build_model('tiny', device='tpu')", "tpu")
