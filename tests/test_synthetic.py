"""Synthetic VOC-format data: layout, determinism and VOC-like content."""
import numpy as np
import pytest
from PIL import Image

from kit import data
from kit import synthetic
from kit import voc


def test_tree_is_a_complete_voc_layout(small_voc):
    assert data.find_tree(small_voc) == small_voc
    counts = data.Tree(small_voc, data.ClassTable.voc()).check_complete()
    assert counts == {"train": 12, "full-val": 8}
    trainval = (small_voc / data.SPLITS_DIR / "trainval.txt").read_text().split()
    assert len(trainval) == 20


def test_masks_are_palettized_with_objects_and_void_band(small_voc):
    modes, values, sizes = set(), set(), set()
    table = data.ClassTable.voc()
    for png in sorted((small_voc / data.MASKS_DIR).glob("*.png")):
        with Image.open(png) as im:
            modes.add(im.mode)
            sizes.add(im.size)
            arr = np.asarray(im)
            assert np.array_equal(np.asarray(im.getpalette()[:768]).reshape(-1, 3)[: voc.NUM_CLASSES],
                                  voc.PALETTE[: voc.NUM_CLASSES])
            np.testing.assert_array_equal(table.decode(im, png), arr)  # indices are the classes
        values |= set(np.unique(arr).tolist())
    assert modes == {"P"}
    assert voc.IGNORE_LABEL in values and 0 in values
    allowed = {voc.CLASS_NAMES.index(c) for c in synthetic.DEFAULT_CLASSES} | {0, voc.IGNORE_LABEL}
    assert values <= allowed and len(values - {0, 255}) >= 3
    assert len(sizes) > 5  # sizes vary like VOC's


def test_some_jpegs_are_grayscale(small_voc):
    modes = [Image.open(p).mode for p in sorted((small_voc / data.IMAGES_DIR).glob("*.jpg"))]
    assert "L" in modes and "RGB" in modes


def test_generation_is_deterministic_for_a_seed(tmp_path):
    a = synthetic.generate_voc_tree(tmp_path / "a", 3, 2, seed=7, min_size=50, max_size=80, progress=False)
    b = synthetic.generate_voc_tree(tmp_path / "b", 3, 2, seed=7, min_size=50, max_size=80, progress=False)
    c = synthetic.generate_voc_tree(tmp_path / "c", 3, 2, seed=8, min_size=50, max_size=80, progress=False)
    masks = data.MASKS_DIR
    names = sorted(p.name for p in (a / masks).iterdir())
    same = [(a / masks / n).read_bytes() == (b / masks / n).read_bytes() for n in names]
    differ = [(a / masks / n).read_bytes() != (c / masks / n).read_bytes() for n in names]
    assert all(same) and any(differ)


def test_unknown_class_is_a_data_error(tmp_path):
    with pytest.raises(data.DataError, match="unknown VOC classes"):
        synthetic.generate_voc_tree(tmp_path / "x", 1, 2, classes=("unicorn",), progress=False)
