"""The console and Markdown reports, built from hand-made journeys that mimic SD 1.5."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from shapetrace.errors import ShapeTraceError
from shapetrace.journey import Check, Journey, LayerRecord, Stage
from shapetrace.report import (
    LayerSummary,
    Report,
    ResolutionExplainer,
    StageJourney,
    choose_layers,
    escape,
    fmt_shape,
    print_report,
    short_name,
    symbolic,
    to_markdown,
)
from shapetrace.report._format import short_names

FIRST_CROSS = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
FIRST_SELF = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
#: SD 1.5's attention blocks: (block, place, level, channels, transformers).
SD15_BLOCKS = (
    ("down_blocks.0", "down", 0, 320, 2),
    ("down_blocks.1", "down", 1, 640, 2),
    ("down_blocks.2", "down", 2, 1280, 2),
    ("mid_block", "mid", 3, 1280, 1),
    ("up_blocks.1", "up", 2, 1280, 3),
    ("up_blocks.2", "up", 1, 640, 3),
    ("up_blocks.3", "up", 0, 320, 3),
)


def attention_layer(
    name: str,
    *,
    kind: str = "cross",
    place: str = "down",
    grid: tuple[int, int] | None = (32, 32),
    channels: int = 320,
    batch: int = 1,
    heads: int = 8,
    tokens: int | None = None,
    context: tuple[int, int] = (77, 768),
    processor: str = "AttnProcessor2_0",
    call: int = 0,
) -> LayerRecord:
    """A layer record the way the tracer writes one (fused SDPA derives scores and probs)."""
    n = tokens if grid is None else grid[0] * grid[1]
    assert n is not None
    c, d = channels, channels // heads
    m, dm = context if kind == "cross" else (n, c)
    stages = [Stage("feature_map", (batch, c, *grid), op="conv2d")] if grid else []
    stages.append(Stage("input", (batch, n, c), op="flatten"))
    if kind == "cross":
        stages.append(Stage("context", (batch, m, dm), op="encoder_hidden_states"))
    stages += [
        Stage("query", (batch, n, c), op="linear"),
        Stage("key", (batch, m, c), op="linear"),
        Stage("value", (batch, m, c), op="linear"),
        Stage("query_heads", (batch, heads, n, d), op="view+transpose"),
        Stage("key_heads", (batch, heads, m, d), op="view+transpose"),
        Stage("value_heads", (batch, heads, m, d), op="view+transpose"),
    ]
    if processor == "AttnProcessor":
        folded, nm = (batch * heads, n, m), "(B*H, N, M)"
        stages += [
            Stage("scores", (batch, heads, n, m), op="baddbmm", raw_shape=folded, layout=nm),
            Stage("probs", (batch, heads, n, m), op="softmax", raw_shape=folded, layout=nm),
            Stage(
                "attended",
                (batch, heads, n, d),
                op="bmm",
                raw_shape=(batch * heads, n, d),
                layout="(B*H, N, d)",
            ),
        ]
    else:
        sdpa = "scaled_dot_product_attention"
        stages += [
            Stage("scores", (batch, heads, n, m), op=sdpa, derived=True),
            Stage("probs", (batch, heads, n, m), op=sdpa, derived=True),
            Stage("attended", (batch, heads, n, d), op=sdpa),
        ]
    stages += [
        Stage("merged", (batch, n, c), op="transpose+reshape"),
        Stage("output", (batch, n, c), op="linear"),
    ]
    return LayerRecord(
        name=name,
        kind=kind,
        place=place,
        resolution=grid,
        processor=processor,
        heads=heads,
        head_dim=d,
        stages=stages,
        module_type="Attention",
        call=call,
        scale=d**-0.5,
        dtype="float32",
        device="meta",
    )


def sd15_journey(
    height: int = 256, width: int = 256, batch: int = 1, processor: str = "AttnProcessor2_0"
) -> Journey:
    """All 32 attention layers of SD 1.5 in call order, at the given image size."""
    lh, lw = height // 8, width // 8
    layers = []
    for block, place, level, channels, count in SD15_BLOCKS:
        for a in range(count):
            for attn, kind in (("attn1", "self"), ("attn2", "cross")):
                layers.append(
                    attention_layer(
                        f"{block}.attentions.{a}.transformer_blocks.0.{attn}",
                        kind=kind,
                        place=place,
                        grid=(lh >> level, lw >> level),
                        channels=channels,
                        batch=batch,
                        processor=processor,
                    )
                )
    return Journey(
        layers=layers, model="sd15", height=height, width=width, batch=batch, device="meta"
    )


def render(renderable: object, width: int = 160) -> str:
    """What ``renderable`` prints on a plain console ``width`` wide, trailing spaces removed."""
    out = io.StringIO()
    Console(width=width, file=out, color_system=None).print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def row_of(text: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cells start with ``first_cell``."""
    for line in text.splitlines():
        cells = re.split(r"\s{2,}|\s*[│┃]\s*", line.strip())
        cells = [c for c in cells if c]
        if cells and " ".join(cells).startswith(first_cell):
            return cells
    raise AssertionError(f"no row starting {first_cell!r} in:\n{text}")


# --- formatting -----------------------------------------------------------------------------


def test_shapes_print_as_python_tuples() -> None:
    assert fmt_shape((1, 8, 1024, 77)) == "(1, 8, 1024, 77)"
    assert fmt_shape((5,)) == "(5,)"


def test_symbolic_layouts_follow_the_contract_stage_names() -> None:
    assert symbolic("input", 3) == "(B, N, C)"
    assert symbolic("key_heads", 4) == "(B, H, M, d)"
    assert symbolic("scores", 4) == "(B, H, N, M)"
    assert symbolic("feature_map", 4) == "(B, C, h, w)"
    assert symbolic("scores", 3) == "—"
    assert symbolic("something_else", 2) == "—"


def test_diffusers_layer_names_shorten_and_others_stay() -> None:
    assert short_name(FIRST_CROSS) == "down.0.0.attn2"
    assert short_name("mid_block.attentions.0.transformer_blocks.0.attn1") == "mid.0.attn1"
    assert short_name("up_blocks.3.attentions.2.transformer_blocks.4.attn2") == "up.3.2.t4.attn2"
    assert short_name("text_encoder.layers.0.self_attn") == "text_encoder.layers.0.self_attn"


def test_short_names_fall_back_to_full_names_when_two_would_collide() -> None:
    names = ["down_blocks.0.attentions.0.attn", "down.0.0.attn"]
    assert short_names(names) == {n: n for n in names}


# --- console: header and summary ------------------------------------------------------------


def test_header_gives_model_size_batch_device_latent_and_layer_counts() -> None:
    text = render(Report(sd15_journey(512, 768, batch=2)))
    assert "sd15" in text
    assert "512×768" in text
    assert "64×96 (image ÷ 8)" in text
    assert "32 attention layers: 16 self, 16 cross" in text
    assert "(2, 77, 768)" in text
    assert re.search(r"batch\s+2", text)
    assert re.search(r"device\s+meta", text)


def test_summary_table_has_one_row_per_layer_with_short_names_and_the_tables_numbers() -> None:
    text = render(LayerSummary(sd15_journey()))
    assert row_of(text, "2 down.0.0.attn2") == [
        "2",
        "down.0.0.attn2",
        "cross",
        "down",
        "32×32",
        "1024",
        "77",
        "320",
        "8×40",
        "(1, 8, 1024, 77)",
    ]
    assert row_of(text, "1 down.0.0.attn1")[5:7] == ["1024", "1024"]
    assert row_of(text, "14 mid.0.attn2")[4:6] == ["4×4", "16"]
    assert "32 up.3.2.attn2" in " ".join(text.split())


def test_summary_shows_the_processor_column_only_when_processors_differ() -> None:
    journey = sd15_journey()
    assert "processor" not in render(LayerSummary(journey))
    journey.layers[0] = attention_layer(FIRST_SELF, kind="self", processor="AttnProcessor")
    assert "AttnProcessor2_0" in render(LayerSummary(journey))


def test_check_marks_appear_with_checks_and_violations_are_listed_under_the_table() -> None:
    journey = sd15_journey()
    journey.layers[0].checks = [Check("softmax_rows", True)]
    journey.layers[1].checks = [Check("softmax_axis", False, "rows sum to 1 over queries")]
    text = render(LayerSummary(journey))
    assert row_of(text, "1 down.0.0.attn1")[-1] == "✓"
    assert row_of(text, "2 down.0.0.attn2")[-1] == "✗"
    assert f"✗ {FIRST_CROSS}: softmax_axis: rows sum to 1 over queries" in text


def test_repeated_calls_are_counted_and_marked() -> None:
    layer = attention_layer(FIRST_CROSS)
    again = attention_layer(FIRST_CROSS, call=1)
    journey = Journey(layers=[layer, again], model="m", height=256, width=256, batch=1)
    text = render(Report(journey))
    assert "1 attention layer: 1 cross (2 calls)" in text
    assert "down.0.0.attn2 (call 1)" in text


def test_user_text_is_not_read_as_rich_markup() -> None:
    layer = attention_layer("blocks[bold]x[/bold].attn2")
    text = render(LayerSummary(Journey(layers=[layer], model="[red]m[/red]")))
    assert "blocks[bold]x[/bold].attn2" in text


# --- console: resolution explainer ----------------------------------------------------------


def test_explainer_says_the_tutorial_table_holds_at_256() -> None:
    text = " ".join(render(ResolutionExplainer(sd15_journey(256, 256))).split())
    assert "image 256×256 → latent 32×32 (÷8) → attention grids 32×32, 16×16, 8×8, 4×4" in text
    assert "(1, 320, 32, 32) → (1, 1024, 320), holds at this size" in text
    assert "(B, 320, 32, 32), 32×32 = 1024 tokens, 8 heads of 40" in text


def test_explainer_places_the_tutorial_table_at_256_when_tracing_512() -> None:
    text = " ".join(render(ResolutionExplainer(sd15_journey(512, 512))).split())
    assert "holds at 256×256; at 512×512 the 320-channel level has 64×64 = 4096" in (
        text
    )
    assert "the 32×32 grid (1024 tokens) is the 640-channel level" in text


def test_explainer_groups_cross_layers_by_resolution_like_design_table() -> None:
    text = render(ResolutionExplainer(sd15_journey(512, 512)), width=200)
    assert row_of(text, "0 64×64") == [
        "0",
        "64×64",
        "4096",
        "320",
        "8×40",
        "down_blocks.0 (2), up_blocks.3 (3)",
    ]
    assert "layers (cross and self)" in text
    assert row_of(text, "3 8×8")[:6] == ["3", "8×8", "64", "1280", "8×160", "mid_block (1)"]


def test_explainer_takes_non_square_grids_from_the_layers() -> None:
    text = " ".join(render(ResolutionExplainer(sd15_journey(512, 768))).split())
    assert "latent 64×96 (÷8) → attention grids 64×96, 32×48, 16×24, 8×12" in text
    assert "tokens N = h·w: 6144, 1536, 384, 96" in text
    assert "at 512×768 the 320-channel level has 64×96 = 6144 tokens" in text


def test_explainer_never_guesses_a_grid_from_a_square_token_count() -> None:
    # 16×64 = 1024 = 32²: a sqrt(N) guess would say 32×32.
    layer = attention_layer(FIRST_CROSS, grid=(16, 64))
    text = render(ResolutionExplainer(Journey(layers=[layer], height=128, width=512)))
    assert "16×64" in text
    assert "32×32 =" not in text


def test_explainer_handles_layers_without_a_grid() -> None:
    text_layer = attention_layer(
        "text_encoder.layers.0.self_attn", kind="self", place="text", grid=None, tokens=77
    )
    journey = Journey(layers=[text_layer], model="reference")
    text = render(Report(journey))
    assert row_of(text, "— —") == [
        "—",
        "—",
        "77",
        "320",
        "8×40",
        "text_encoder.layers (1)",
    ]
    assert "self layers" in text
    assert "cross layers" not in text
    assert "show —" in text
    assert re.search(r"latent\s+—", text)


def test_explainer_has_a_column_per_kind_when_their_blocks_differ() -> None:
    journey = Journey(
        layers=[
            attention_layer("text.layers.0.self_attn", kind="self", grid=None, tokens=77),
            attention_layer("block.cross_attn"),
        ]
    )
    text = render(ResolutionExplainer(journey))
    assert row_of(text, "0 32×32")[5:] == ["block.cross_attn (1)", "—"]
    assert row_of(text, "— —")[5:] == ["—", "text.layers (1)"]


def test_explainer_mentions_the_batch_when_it_is_not_1() -> None:
    text = " ".join(render(ResolutionExplainer(sd15_journey(batch=2))).split())
    assert "Batch 2: every shape starts with 2" in text


# --- console: stage journey -----------------------------------------------------------------

SEED_002_SHAPES = {
    "feature_map": "(1, 320, 32, 32)",
    "input": "(1, 1024, 320)",
    "context": "(1, 77, 768)",
    "query": "(1, 1024, 320)",
    "key": "(1, 77, 320)",
    "value": "(1, 77, 320)",
    "query_heads": "(1, 8, 1024, 40)",
    "key_heads": "(1, 8, 77, 40)",
    "value_heads": "(1, 8, 77, 40)",
    "scores": "(1, 8, 1024, 77)",
    "probs": "(1, 8, 1024, 77)",
    "attended": "(1, 8, 1024, 40)",
    "merged": "(1, 1024, 320)",
    "output": "(1, 1024, 320)",
}


def test_journey_table_echoes_the_tutorial_table_step_by_step() -> None:
    text = render(StageJourney(attention_layer(FIRST_CROSS)), width=200)
    assert f"Journey: {FIRST_CROSS}" in text
    for step, (stage, shape) in enumerate(SEED_002_SHAPES.items(), start=1):
        assert row_of(text, f"{step} {stage}")[2] == shape
    assert row_of(text, "10 scores")[3] == "(B, H, N, M)"
    assert row_of(text, "7 query_heads")[3] == "(B, H, N, d)"


def test_journey_explains_each_stage_with_the_real_numbers() -> None:
    text = " ".join(render(StageJourney(attention_layer(FIRST_CROSS)), width=220).split())
    assert "W_K 768×320 projects 768 → 320" in text
    assert "another linear layer, W_V 768×320" in text
    assert "W_Q 320×320" in text
    assert "split 320 into 8 heads of 40" in text
    assert "Kᵀ is (1, 8, 40, 77)" in text
    assert "1/√40" in text
    assert "softmax over the last axis, the 77 keys" in text
    assert "weights over the 77 text tokens sum to 1" in text
    assert "merge the 8 heads back: 8×40 = 320" in text
    assert "W_O 320×320" in text
    assert "B=1 batch · N=1024 image tokens (32×32) · M=77 text tokens" in text


def test_fused_sdpa_stages_are_marked_derived() -> None:
    text = render(StageJourney(attention_layer(FIRST_CROSS)), width=200)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if " scores " in line)
    assert "derived" in lines[at + 1]
    assert "derived" not in render(
        StageJourney(attention_layer(FIRST_CROSS, processor="AttnProcessor"))
    )


def test_folded_layout_of_attn_processor_is_shown_under_the_shape() -> None:
    layer = attention_layer(FIRST_CROSS, processor="AttnProcessor", batch=2)
    text = render(StageJourney(layer), width=200)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if " probs " in line)
    assert "raw (16, 1024, 77)" in lines[at + 1]
    assert "(B*H, N, M)" in lines[at + 1]


def test_self_attention_journey_says_keys_are_the_image_tokens() -> None:
    layer = attention_layer(FIRST_SELF, kind="self")
    text = " ".join(render(StageJourney(layer), width=220).split())
    assert "softmax over the last axis, the 1024 keys" in text
    assert "M=1024 keys (= N, self-attention)" in text
    assert not re.search(r"^\s*\d+\s+context\s", text, re.MULTILINE)


def test_narrow_consoles_get_the_explanations_under_the_table() -> None:
    text = render(StageJourney(attention_layer(FIRST_CROSS)), width=100)
    assert "what happens" not in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert re.search(r"^\s*5 key\s+K from the text: W_K 768×320", text, re.MULTILINE)


def test_print_report_shows_the_first_cross_layer_by_default() -> None:
    out = io.StringIO()
    print_report(sd15_journey(), console=Console(width=120, file=out, color_system=None))
    text = out.getvalue()
    assert f"Journey: {FIRST_CROSS}" in text
    assert text.count("Journey: ") == 1


# --- choosing layers ------------------------------------------------------------------------


def test_layers_are_chosen_by_full_short_or_partial_name() -> None:
    journey = sd15_journey()
    assert [x.name for x in choose_layers(journey)] == [FIRST_CROSS]
    assert [x.name for x in choose_layers(journey, [FIRST_SELF])] == [FIRST_SELF]
    assert [x.name for x in choose_layers(journey, ["mid.0.attn2"])] == [
        "mid_block.attentions.0.transformer_blocks.0.attn2"
    ]
    assert len(choose_layers(journey, ["up.3"])) == 6
    assert len(choose_layers(journey, ["up.3"], kind="cross")) == 3


def test_every_layer_and_kind_filters_combine() -> None:
    journey = sd15_journey()
    assert len(choose_layers(journey, every=True)) == 32
    assert len(choose_layers(journey, every=True, kind="self")) == 16
    assert [x.name for x in choose_layers(journey, kind="self")] == [FIRST_SELF]


def test_an_unknown_layer_name_is_an_error_listing_the_names() -> None:
    with pytest.raises(ShapeTraceError, match=r"no traced attention layer matches 'attn9'.*"):
        choose_layers(sd15_journey(), ["attn9"])
    with pytest.raises(ShapeTraceError, match=r"down\.0\.0\.attn1, down\.0\.0\.attn2"):
        choose_layers(sd15_journey(), ["nope"])


def test_a_kind_with_no_layers_is_an_error() -> None:
    journey = Journey(layers=[attention_layer(FIRST_SELF, kind="self")])
    with pytest.raises(ShapeTraceError, match="no cross-attention layer was traced"):
        choose_layers(journey, kind="cross")


# --- markdown -------------------------------------------------------------------------------


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first table after ``heading`` (escaped pipes kept in their cell)."""
    blocks = markdown.split(heading, 1)[1].split("\n\n")
    block = next(b for b in blocks if b.startswith("|"))
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in block.splitlines()]
    return [[c.strip() for c in row] for row in rows]


def test_markdown_has_the_same_sections_and_numbers() -> None:
    md = to_markdown(sd15_journey(512, 512))
    assert md.startswith("# shapetrace: sd15 at 512×512\n")
    for heading in ("## Attention layers", "## Image size → tokens", "## Journey: "):
        assert heading in md
    rows = table_rows(md, "## Attention layers")
    assert rows[0][:3] == ["#", "layer", "kind"]
    assert rows[3][:10] == [
        "2",
        "down.0.0.attn2",
        "cross",
        "down",
        "64×64",
        "4096",
        "77",
        "320",
        "8×40",
        "`(1, 8, 4096, 77)`",
    ]
    assert len(rows) == 2 + 32
    assert "holds at 256×256" in md
    assert "softmax over the last axis, the 77 keys" in md


def test_markdown_journey_rows_carry_the_tutorial_tables_shapes() -> None:
    md = to_markdown(Journey(layers=[attention_layer(FIRST_CROSS)], height=256, width=256))
    rows = table_rows(md, "## Journey: ")
    shapes = {row[1].replace("\\_", "_"): row[2] for row in rows[2:]}
    assert shapes["scores"] == "*`(1, 8, 1024, 77)`*"
    assert shapes["key_heads"] == "`(1, 8, 77, 40)`"
    assert "*derived*" in rows[11][4]


def test_markdown_escapes_user_text_so_tables_keep_their_columns() -> None:
    layer = attention_layer("evil|name<script>`x`")
    layer.checks = [Check("rows|sum", False, "<b>bad</b>")]
    md = to_markdown(Journey(layers=[layer], model="m|<i>"))
    assert "<script>" not in md and "<b>" not in md and "<i>" not in md
    rows = table_rows(md, "## Attention layers")
    assert len({len(row) for row in rows}) == 1
    assert rows[2][1] == "evil\\|name&lt;script&gt;\\`x\\`"
    assert "- ✗ **evil\\|name&lt;script&gt;\\`x\\`**: rows\\|sum: &lt;b&gt;bad&lt;/b&gt;" in md


def test_escape_flattens_newlines() -> None:
    assert escape("a\nb") == "a b"
    assert escape("a_b*c") == "a\\_b\\*c"


# --- narrow consoles and unusual layers -----------------------------------------------------


@pytest.mark.parametrize("width", [80, 100, 120])
def test_summary_drops_columns_rather_than_cutting_names_or_shapes(width: int) -> None:
    text = render(LayerSummary(sd15_journey(512, 768, batch=2)), width=width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    assert "down.0.0.attn2" in text
    assert "(2, 8, 6144, 6144)" in text


def test_single_head_spatial_attention_on_a_feature_map_is_explained() -> None:
    # Seed 001's functional cross-attention: 4-D in, one head of 768, 4-D out.
    stages = [
        Stage("input", (1, 320, 32, 32)),
        Stage("tokens", (1, 1024, 320)),
        Stage("context", (1, 77, 768)),
        Stage("query", (1, 1024, 768)),
        Stage("key", (1, 77, 768)),
        Stage("value", (1, 77, 768)),
        Stage("query_heads", (1, 1, 1024, 768), raw_shape=(1, 1024, 768), layout="(B, T, d)"),
        Stage("scores", (1, 1, 1024, 77)),
        Stage("probs", (1, 1, 1024, 77)),
        Stage("attended", (1, 1, 1024, 768)),
        Stage("merged", (1, 1024, 768)),
        Stage("output", (1, 320, 32, 32)),
    ]
    layer = LayerRecord("spatial_attn", "cross", "model", (32, 32), "forward", 1, 768, stages)
    text = render(StageJourney(layer), width=220)
    flat = " ".join(text.split())
    assert "1 head of 768" in flat
    assert "W_Q 320×768" in flat
    assert "one head: nothing to merge" in flat
    assert "W_O 768×320 (to_out), reshaped back to the feature map" in flat
    assert row_of(text, "1 input")[3] == "(B, C, h, w)"
    assert row_of(text, "2 tokens")[3] == "(B, N, C)"
    assert row_of(text, "12 output")[3] == "(B, C, h, w)"
    assert "raw (1, 1024, 768)" in text


def test_on_a_narrow_console_long_ops_move_under_the_table_with_the_explanations() -> None:
    layer = attention_layer(FIRST_CROSS, processor="AttnProcessor", batch=2)
    layer.stages = [
        Stage(s.name, s.shape, "reshape→permute→reshape→" * 2, s.raw_shape, s.layout, s.derived)
        for s in layer.stages
    ]
    text = render(StageJourney(layer), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    header = next(line for line in text.splitlines() if "step" in line.split())
    assert header.split() == ["step", "stage", "shape", "layout"]
    assert re.search(r"^\s*11 probs\s+\[reshape→permute", text, re.MULTILINE)
    assert "raw (16, 1024, 77)" in text
