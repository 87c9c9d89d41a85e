"""Synthetic VOC-format data: layout, determinism and VOC-like content."""
import numpy as np
from PIL import Image

import download_data
import synthetic
import voc


def test_tree_is_a_complete_voc_layout(small_voc):
    counts = download_data.check_manifest(small_voc, {"train": 12, "val": 8})
    assert counts == {"train": 12, "val": 8}
    trainval = (small_voc / "ImageSets/Segmentation/trainval.txt").read_text().split()
    assert len(trainval) == 20


def test_masks_are_palettized_with_objects_and_void_band(small_voc):
    modes, values, sizes = set(), set(), set()
    for png in sorted((small_voc / "SegmentationClass").glob("*.png")):
        with Image.open(png) as im:
            modes.add(im.mode)
            sizes.add(im.size)
            arr = np.asarray(im)
            assert np.array_equal(np.asarray(im.getpalette()[:768]).reshape(-1, 3)[: voc.NUM_CLASSES],
                                  voc.PALETTE[: voc.NUM_CLASSES])
        values |= set(np.unique(arr).tolist())
    assert modes == {"P"}
    assert voc.IGNORE_LABEL in values and 0 in values
    allowed = {voc.CLASS_NAMES.index(c) for c in synthetic.DEFAULT_CLASSES} | {0, voc.IGNORE_LABEL}
    assert values <= allowed and len(values - {0, 255}) >= 3
    assert len(sizes) > 5  # sizes vary like VOC's


def test_some_jpegs_are_grayscale(small_voc):
    modes = [Image.open(p).mode for p in sorted((small_voc / "JPEGImages").glob("*.jpg"))]
    assert "L" in modes and "RGB" in modes


def test_generation_is_deterministic_for_a_seed(tmp_path):
    a = synthetic.generate_voc_tree(tmp_path / "a", 3, 2, seed=7, min_size=50, max_size=80, progress=False)
    b = synthetic.generate_voc_tree(tmp_path / "b", 3, 2, seed=7, min_size=50, max_size=80, progress=False)
    c = synthetic.generate_voc_tree(tmp_path / "c", 3, 2, seed=8, min_size=50, max_size=80, progress=False)
    names = sorted(p.name for p in (a / "SegmentationClass").iterdir())
    same = [(a / "SegmentationClass" / n).read_bytes() == (b / "SegmentationClass" / n).read_bytes() for n in names]
    differ = [(a / "SegmentationClass" / n).read_bytes() != (c / "SegmentationClass" / n).read_bytes() for n in names]
    assert all(same) and any(differ)
