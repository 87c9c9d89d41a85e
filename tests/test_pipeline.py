"""pipeline.py: alignment, exact mask values, determinism, splits, decoding and named errors."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kit import data
import pipeline
from kit.data import ClassTable, DataError
from kit.voc import IGNORE_LABEL, PALETTE

VOC = ClassTable.voc()

STRIPE_CLASSES = [1, 5, 9, 13, 17]


def _stripes_mask(h, w):
    """Vertical stripes of uneven widths, a horizontal void band: flips and shifts show."""
    edges = np.linspace(0, 1, len(STRIPE_CLASSES) + 1) ** 1.6 * w
    cols = np.digitize(np.arange(w), edges[1:-1])
    mask = np.asarray(STRIPE_CLASSES, np.uint8)[cols][None, :].repeat(h, 0)
    mask[h // 3: h // 3 + 8] = IGNORE_LABEL
    return mask


@pytest.fixture(scope="module")
def coded_voc(tmp_path_factory):
    """A VOC tree whose image colours encode the mask's class (the palette colour)."""
    root = tmp_path_factory.mktemp("coded") / "VOC2012"
    jpg_dir, seg_dir, sets = root / data.IMAGES_DIR, root / data.MASKS_DIR, root / data.SPLITS_DIR
    for d in (jpg_dir, seg_dir, sets):
        d.mkdir(parents=True)
    ids = [f"img{i}" for i in range(6)]
    for i, image_id in enumerate(ids):
        mask = _stripes_mask(90 + 10 * i, 120 - 8 * i)
        Image.fromarray(PALETTE[mask]).save(jpg_dir / f"{image_id}.jpg", quality=100)
        VOC.save_mask(mask, seg_dir / f"{image_id}.png")
    (sets / "train.txt").write_text("\n".join(ids[:4]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[4:]) + "\n")
    return data.resolve_tree(root)


def _decode_class(image):
    """Nearest palette colour among the classes used, for (..., 3) float images."""
    classes = np.array(STRIPE_CLASSES + [IGNORE_LABEL])
    d = ((image[..., None, :] - PALETTE[classes].astype(float)) ** 2).sum(-1)
    return classes[d.argmin(-1)]


def test_image_and_mask_stay_aligned_through_crop_resize_and_flip(coded_voc):
    ds = pipeline.tree_dataset(coded_voc, "train", batch_size=4, epochs=6, input_size=(64, 64),
                              resize_to_before_crop=(100, 100), augmentation=True, color_jitter=False, seed=1)
    agreement = []
    for images, masks in ds:
        agreement.append((_decode_class(images.numpy()) == masks.numpy()).mean())
    # Bilinear blending only touches stripe edges; a misaligned crop or flip would lose far more.
    assert min(agreement) > 0.93


def test_mask_values_are_preserved_exactly(coded_voc):
    ds = pipeline.tree_dataset(coded_voc, "train", batch_size=2, epochs=4, input_size=(48, 56),
                              resize_to_before_crop=(100, 110), augmentation=True, seed=2)
    seen = set()
    for images, masks in ds:
        assert masks.dtype == tf.int32 and images.dtype == tf.float32
        assert tuple(images.shape[1:]) == (48, 56, 3) and tuple(masks.shape[1:]) == (48, 56)
        lo, hi = float(tf.reduce_min(images)), float(tf.reduce_max(images))
        assert pipeline.IMAGE_RANGE[0] <= lo and hi <= pipeline.IMAGE_RANGE[1]
        seen |= set(np.unique(masks.numpy()).tolist())
    assert seen <= set(STRIPE_CLASSES) | {IGNORE_LABEL}
    assert IGNORE_LABEL in seen and len(seen) >= 4


def test_output_size_resizes_masks_with_nearest(coded_voc):
    ds = pipeline.tree_dataset(coded_voc, "val", batch_size=1, input_size=(64, 64), output_size=(16, 16))
    _, masks = next(iter(ds))
    assert tuple(masks.shape) == (1, 16, 16)
    assert set(np.unique(masks.numpy())) <= set(STRIPE_CLASSES) | {IGNORE_LABEL}


@pytest.mark.parametrize("subset", ["val", "test"])
def test_validation_and_test_batches_are_identical_on_two_passes(small_voc, subset):
    ds = pipeline.tree_dataset(data.resolve_tree(small_voc), subset, batch_size=2, input_size=(64, 64))
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    second = [(x.numpy(), y.numpy()) for x, y in ds]
    assert len(first) == 2
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_original_resolution_mode_keeps_each_size(small_voc):
    tree = data.resolve_tree(small_voc)
    ds = pipeline.tree_dataset(tree, "test", batch_size=1, input_size=None)
    for (x, y), (_, png) in zip(ds, tree.pairs("test")):
        h, w = np.asarray(Image.open(png)).shape
        assert tuple(x.shape) == (1, h, w, 3) and tuple(y.shape) == (1, h, w)
    with pytest.raises(ValueError, match="batch_size=1"):
        pipeline.tree_dataset(tree, "test", batch_size=2, input_size=None)


def test_the_chapter_filename_api_follows_the_split(small_voc):
    tree = data.resolve_tree(small_voc)
    pairs = list(pipeline.get_subset_filenames("J", "S", tree.splits_dir, "test"))
    assert pairs == [(f"J/{i}.jpg", f"S/{i}.png") for i in tree.ids("test")]


def test_augmentation_without_resize_before_crop_is_an_error(small_voc):
    with pytest.raises(ValueError, match="resize_to_before_crop"):
        pipeline.tree_dataset(data.resolve_tree(small_voc), "train", batch_size=2, input_size=(64, 64), augmentation=True)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_give_three_channels(tmp_path, mode):
    jpg, png = tmp_path / "a.jpg", tmp_path / "a.png"
    Image.new(mode, (30, 20), 100 if mode == "L" else (10, 200, 30, 0)).save(jpg)
    VOC.save_mask(np.zeros((20, 30), np.uint8), png)
    assert Image.open(jpg).mode == mode
    ds = pipeline.get_subset_tf_dataset([(str(jpg), str(png))], 1, 1, input_size=(16, 16))
    x, _ = next(iter(ds))
    assert tuple(x.shape) == (1, 16, 16, 3)


def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    # The same decoding as predict.py's (data.rgb_array): training and evaluation see what it sees.
    png, mask = tmp_path / "deep.png", tmp_path / "deep_mask.png"
    Image.fromarray(np.full((20, 30), 30000, np.uint16)).save(png)
    VOC.save_mask(np.zeros((20, 30), np.uint8), mask)
    image, _ = pipeline.load_example(str(png), str(mask))
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image, round(30000 / 257))


def _pair(tmp_path, mask_value=0, truncate=False):
    jpg, png = tmp_path / "bad.jpg", tmp_path / "bad.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(jpg)
    if truncate:
        jpg.write_bytes(jpg.read_bytes()[:300])
    mask = np.zeros((40, 40), np.uint8)
    mask[5, 5] = mask_value
    VOC.save_mask(mask, png)
    return str(jpg), str(png)


def _iterate(pairs):
    for _ in pipeline.get_subset_tf_dataset(pairs, 1, 1, input_size=(32, 32)):
        pass


def test_bad_mask_value_names_the_file(tmp_path):
    jpg, png = _pair(tmp_path, mask_value=50)  # palette index 50: a VOC palette colour of no class
    with pytest.raises(tf.errors.OpError, match=r"bad\.png.*\(0, 192, 64\) on 1 pixels"):
        _iterate([(jpg, png)])


def test_truncated_jpeg_names_the_file(tmp_path):
    jpg, png = _pair(tmp_path, truncate=True)
    with pytest.raises(tf.errors.OpError, match=r"bad\.jpg"):
        _iterate([(jpg, png)])


def test_missing_file_names_the_file(tmp_path):
    jpg, png = _pair(tmp_path)
    with pytest.raises(DataError, match="nothere.png"):
        _iterate([(jpg, png), (jpg, str(tmp_path / "nothere.png"))])
