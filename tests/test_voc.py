"""Constants and palette tools against PIL on palettized PNGs written here."""
import numpy as np
import pytest
from PIL import Image

import voc


def test_constants_follow_the_devkit():
    assert voc.NUM_CLASSES == 21 == len(voc.CLASS_NAMES)
    assert voc.CLASS_NAMES[0] == "background" and voc.CLASS_NAMES[15] == "person"
    assert voc.CLASS_NAMES[-1] == "tvmonitor"
    assert voc.IGNORE_LABEL == 255
    assert voc.PALETTE.shape == (256, 3) and voc.PALETTE.dtype == np.uint8
    assert tuple(voc.PALETTE[1]) == (128, 0, 0) and tuple(voc.PALETTE[15]) == (192, 128, 128)
    assert tuple(voc.PALETTE[255]) == (224, 224, 192)
    assert len({tuple(c) for c in voc.PALETTE}) == 256


@pytest.fixture
def palettized_png(tmp_path):
    rng = np.random.default_rng(0)
    index = rng.integers(0, voc.NUM_CLASSES, (37, 53)).astype(np.uint8)
    index[:3, :] = voc.IGNORE_LABEL
    path = tmp_path / "mask.png"
    voc.save_mask(index, path)
    return index, path


def test_rgb_image_from_palette_matches_pil(palettized_png):
    index, path = palettized_png
    with Image.open(path) as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("RGB"))
        got_from_image = voc.rgb_image_from_palette(im)
    np.testing.assert_array_equal(got_from_image, expected)
    np.testing.assert_array_equal(voc.rgb_image_from_palette(index), expected)


def test_palettize_round_trips_pil_colours(palettized_png):
    index, path = palettized_png
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(np.asarray(im), index)  # PIL reads indices back
    out = voc.palettize(rgb, voc.PALETTE)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, index)
    np.testing.assert_array_equal(voc.load_mask(path), index)


def test_palettize_names_the_pixel_and_colour_not_in_palette():
    rgb = voc.rgb_image_from_palette(np.zeros((4, 5), np.uint8))
    rgb[2, 3] = (1, 2, 3)
    with pytest.raises(ValueError, match=r"\(1, 2, 3\).*row=2, col=3"):
        voc.palettize(rgb)


def test_palettize_duplicate_colours_take_the_first_index():
    palette = np.array([[0, 0, 0], [9, 9, 9], [0, 0, 0]], np.uint8)
    rgb = np.zeros((2, 2, 3), np.uint8)
    np.testing.assert_array_equal(voc.palettize(rgb, palette), np.zeros((2, 2)))
