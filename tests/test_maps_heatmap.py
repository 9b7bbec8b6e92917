"""Heat maps: per-map normalization, numpy colormap, upsampling, the labelled grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shapetrace.errors import InputShapeError
from shapetrace.maps.export import word_maps
from shapetrace.maps.heatmap import (
    colorize,
    heatmap_image,
    labelled_grid,
    normalize,
    slug,
    upsample,
)
from shapetrace.maps.text import tokenize


def test_each_map_is_normalized_by_its_own_min_and_max():
    x = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    torch.testing.assert_close(normalize(x), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(normalize(torch.full((2, 2), 3.0)), torch.zeros(2, 2))


def test_the_colormap_runs_from_viridis_purple_to_yellow():
    rgb = colorize(np.array([[0.0, 0.5, 1.0, 2.0]]))
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [68, 1, 84]
    assert rgb[0, 1].tolist() == [33, 144, 141]
    assert rgb[0, 2].tolist() == [253, 231, 37] == rgb[0, 3].tolist()  # clipped


def test_a_map_is_upsampled_to_the_image_size_height_first():
    img = heatmap_image(torch.rand(4, 6), size=(64, 96))
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert img.size == (96, 64)  # pillow: (width, height)
    near = upsample(torch.tensor([[0.0, 1.0]]), (2, 4), mode="nearest")
    assert near.tolist() == [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    with pytest.raises(InputShapeError, match=r"one \(h, w\) map, got \(1, 4, 6\)"):
        upsample(torch.rand(1, 4, 6), (8, 8))


def test_the_grid_has_a_tile_and_a_label_per_map():
    images = [heatmap_image(torch.rand(4, 4), size=(32, 32)) for _ in range(3)]
    grid = labelled_grid(images, ["a", "cat", "mat"], tile=64, pad=4)
    assert grid.size == (3 * (64 + 4) + 4, 64 + 16 + 4 + 4)
    label_band = np.asarray(grid)[4 + 64 : 4 + 64 + 16]
    assert (label_band < 128).any()  # dark label text under the tiles
    with pytest.raises(InputShapeError, match="3 images but 2 labels"):
        labelled_grid(images, ["a", "b"])


def test_word_maps_sum_the_tokens_of_each_word():
    tokens = tokenize("Hello, cat")  # hello=1, ","=2, cat=3
    maps = torch.rand(2, 2, 77)
    words = word_maps(maps, tokens)
    assert [w.word for w in words] == ["Hello,", "cat"]
    torch.testing.assert_close(words[0].map, maps[..., 1] + maps[..., 2])
    torch.testing.assert_close(words[1].map, maps[..., 3])
    with pytest.raises(InputShapeError, match=r"maps must be \(h, w, 77\)"):
        word_maps(torch.rand(2, 2, 10), tokens)


def test_file_names_are_slugs_of_the_words():
    assert slug("cat,") == "cat"
    assert slug("über!") == "ber"
    assert slug("...") == "token"
