"""The tf.data input pipeline: VOC file lists, decoding, augmentation, batching.

    from pipeline import voc_dataset
    train = voc_dataset("data/.../VOC2012", "train", batch_size=8, input_size=(384, 384),
                        resize_to_before_crop=(444, 444), augmentation=True, shuffle=True, seed=0)

Elements are (image, mask): image float32 (B, H, W, 3), RGB in [0, 255] (IMAGE_RANGE; the
model applies its backbone's own preprocessing); mask int32 (B, H, W) with class indices
0..20 and IGNORE_LABEL (255) for void pixels. Geometric ops act on both, photometric ops on
the image only, and masks are only ever resized with nearest neighbour.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf
from PIL import Image

from voc import IGNORE_LABEL, NUM_CLASSES

IMAGE_RANGE = (0.0, 255.0)  # float32 RGB; documented once, used everywhere
SPLIT_SEED = 2012  # fixes the val/test halves of val.txt on every run and machine
AUTOTUNE = tf.data.AUTOTUNE
VALID_LABELS = np.array(list(range(NUM_CLASSES)) + [IGNORE_LABEL])


def voc_dirs(voc_root: str | Path) -> tuple[Path, Path, Path]:
    """(JPEGImages, SegmentationClass, ImageSets/Segmentation) of a VOC2012 folder."""
    root = Path(voc_root)
    return root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation"


def split_ids(subset_dir: str | Path, subset: str) -> list[str]:
    """Image ids of a subset: train from train.txt; val and test are the two halves of val.txt.

    val.txt is shuffled with a fixed seed; the first half is validation, the second test.
    The halves are disjoint and together exactly val.txt.
    """
    subset_dir = Path(subset_dir)
    if subset.startswith("train"):
        listing = subset_dir / "train.txt"
    elif subset.startswith(("val", "test")):
        listing = subset_dir / "val.txt"
    else:
        raise ValueError(f"unknown subset {subset!r}: expected one starting with 'train', 'val' or 'test'")
    if not listing.is_file():
        raise FileNotFoundError(f"missing split list {listing}")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if subset.startswith("train"):
        return ids
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    half = len(shuffled) // 2
    return shuffled[:half] if subset.startswith("val") else shuffled[half:]


def get_subset_filenames(orig_dir, seg_dir, subset_dir, subset: str):
    """Yield (jpg_path, png_path) pairs of a subset (see `split_ids`), as strings."""
    for image_id in split_ids(subset_dir, subset):
        yield str(Path(orig_dir) / f"{image_id}.jpg"), str(Path(seg_dir) / f"{image_id}.png")


def load_example(jpg_path: str, png_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair with PIL: image (H, W, 3) uint8 RGB, mask (H, W) uint8 palette indices.

    PIL reads palettized PNGs as indices (tf.io.decode_png would expand them to colours) and
    converts grayscale and CMYK JPEGs to RGB. Every failure names the file.
    """
    try:
        with Image.open(jpg_path) as im:
            image = np.asarray(im.convert("RGB"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... all mean "bad file"
        raise ValueError(f"cannot read image {jpg_path}: {type(err).__name__}: {err}") from None
    try:
        with Image.open(png_path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"expected a palettized or 8-bit label PNG, got mode {im.mode!r}")
            mask = np.asarray(im)
    except Exception as err:
        raise ValueError(f"cannot read mask {png_path}: {type(err).__name__}: {err}") from None
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {png_path} is {mask.shape}, image {jpg_path} is {image.shape[:2]}")
    bad = np.setdiff1d(np.unique(mask), VALID_LABELS)
    if bad.size:
        raise ValueError(f"mask {png_path} has values {bad.tolist()} outside 0..{NUM_CLASSES - 1} and {IGNORE_LABEL}")
    return image, mask


def _decode(jpg_path, png_path):
    """Graph wrapper of `load_example`: image (H, W, 3) uint8, mask (H, W) uint8."""
    def load(jpg, png):
        return load_example(jpg.decode(), png.decode())

    image, mask = tf.numpy_function(load, [jpg_path, png_path], [tf.uint8, tf.uint8], stateful=False)
    image.set_shape((None, None, 3))
    mask.set_shape((None, None))
    return image, mask


def _resize_pair(image, mask, size):
    """Image bilinear to float32, mask nearest (exact values): (h, w, 3), (h, w) -> size."""
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def resize_example(image, mask, input_size):
    """Deterministic resize to `input_size` (validation, test)."""
    image, mask = _resize_pair(image, mask, input_size)
    return tf.clip_by_value(image, *IMAGE_RANGE), mask


def augment_example(image, mask, seed, input_size, resize_to_before_crop, color_jitter: bool = True,
                    hue=0.1, brightness=0.1, contrast=(0.8, 1.2)):
    """Random crop-or-resize, horizontal flip and (optionally) colour jitter of one example.

    Args:
        image: (H, W, 3) uint8; mask: (H, W) uint8; seed: (2,) int64 for the stateless ops.
    Returns:
        image (h, w, 3) float32 in IMAGE_RANGE, mask (h, w) uint8, (h, w) = input_size.
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)  # (6, 2): one per random step
    h, w = input_size

    def crop():
        # Enlarge, then one window for both: crop the image and mask stacked as channels.
        big_image, big_mask = _resize_pair(image, mask, resize_to_before_crop)
        stacked = tf.concat([big_image, tf.cast(big_mask, tf.float32)[..., None]], axis=-1)
        window = tf.image.stateless_random_crop(stacked, (h, w, 4), seed=seeds[1])
        return window[..., :3], tf.cast(window[..., 3], tf.uint8)

    def resize():
        return _resize_pair(image, mask, input_size)

    use_crop = tf.random.stateless_uniform((), seeds[0]) < 0.5
    image_f, mask_f = tf.cond(use_crop, crop, resize)
    flip = tf.random.stateless_uniform((), seeds[2]) < 0.5
    image_f = tf.cond(flip, lambda: tf.reverse(image_f, [1]), lambda: image_f)
    mask_f = tf.cond(flip, lambda: tf.reverse(mask_f, [1]), lambda: mask_f)
    image_f.set_shape((h, w, 3))
    mask_f.set_shape((h, w))
    if not color_jitter:
        return image_f, mask_f
    # Colour jitter in [0, 1], clipped after each step so values stay valid.
    x = image_f / IMAGE_RANGE[1]
    x = tf.clip_by_value(tf.image.stateless_random_brightness(x, brightness, seeds[3]), 0.0, 1.0)
    x = tf.clip_by_value(tf.image.stateless_random_contrast(x, *contrast, seeds[4]), 0.0, 1.0)
    x = tf.clip_by_value(tf.image.stateless_random_hue(x, hue, seeds[5]), 0.0, 1.0)
    return x * IMAGE_RANGE[1], mask_f


def _finish(image, mask, output_size):
    """Cast the mask to int32, resized (nearest) to `output_size` if the model's output differs."""
    if output_size is not None:
        mask = tf.image.resize(mask[..., None], output_size, method="nearest")[..., 0]
    return image, tf.cast(mask, tf.int32)


def decoded_dataset(pairs: Iterable[tuple[str, str]], check_files: bool = True) -> tf.data.Dataset:
    """(image uint8 (H, W, 3), mask uint8 (H, W)) per file pair, decoded in parallel, in order."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no files in this subset")
    if check_files:
        for path in (p for pair in pairs for p in pair):
            if not Path(path).is_file():
                raise FileNotFoundError(f"missing file {path}")
    jpgs, pngs = zip(*pairs)
    ds = tf.data.Dataset.from_tensor_slices((list(jpgs), list(pngs)))
    return ds.map(_decode, num_parallel_calls=AUTOTUNE, deterministic=True)


def get_subset_tf_dataset(subset_filename_gen_func: Callable | Iterable, batch_size: int, epochs: int | None,
                          input_size=(256, 256), output_size=None, resize_to_before_crop=None,
                          augmentation: bool = False, shuffle: bool = False, seed: int | None = None,
                          cache: bool | str = True, color_jitter: bool = True) -> tf.data.Dataset:
    """A batched dataset of (image float32 (B, H, W, 3), mask int32 (B, H, W)).

    Args:
        subset_filename_gen_func: a callable returning (jpg, png) pairs, or the pairs themselves.
        epochs: passes over the data; None repeats forever (use with steps_per_epoch).
        input_size: (H, W) of every example; None keeps each image's original resolution
            (then batch_size must be 1, as sizes differ).
        output_size: (H, W) of the masks if it differs from input_size.
        resize_to_before_crop: (H, W) to enlarge to before a random input_size crop; required
            with augmentation.
        cache: True caches decoded examples in memory, a string caches to that file prefix,
            False not at all. The cache comes before any random step.
        color_jitter: with augmentation, also jitter hue, brightness and contrast.
    """
    if augmentation and resize_to_before_crop is None:
        raise ValueError("augmentation needs resize_to_before_crop (the size to enlarge to before cropping)")
    if augmentation and input_size is None:
        raise ValueError("augmentation needs an input_size to crop to")
    if input_size is None and batch_size != 1:
        raise ValueError("original-resolution batches need batch_size=1: image sizes differ")
    if augmentation and any(b < i for b, i in zip(resize_to_before_crop, input_size)):
        raise ValueError(f"resize_to_before_crop {resize_to_before_crop} is smaller than input_size {input_size}")
    pairs = subset_filename_gen_func() if callable(subset_filename_gen_func) else subset_filename_gen_func
    pairs = list(pairs)
    ds = decoded_dataset(pairs)
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    if shuffle:
        ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat(epochs) if epochs != 1 else ds
    if augmentation:
        # A deterministic stream of seeds for the stateless random ops: reproducible for a seed.
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        augment = functools.partial(augment_example, input_size=tuple(input_size),
                                    resize_to_before_crop=tuple(resize_to_before_crop), color_jitter=color_jitter)
        ds = tf.data.Dataset.zip((ds, seeds)).map(lambda ex, s: augment(*ex, s), num_parallel_calls=AUTOTUNE)
    elif input_size is not None:
        ds = ds.map(functools.partial(resize_example, input_size=tuple(input_size)), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda image, mask: (tf.cast(image, tf.float32), mask))
    ds = ds.map(functools.partial(_finish, output_size=output_size), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def voc_dataset(voc_root: str | Path, subset: str, batch_size: int, epochs: int | None = 1, **kwargs) -> tf.data.Dataset:
    """`get_subset_tf_dataset` for a subset of a VOC2012 folder."""
    orig_dir, seg_dir, subset_dir = voc_dirs(voc_root)
    pairs = functools.partial(get_subset_filenames, orig_dir, seg_dir, subset_dir, subset)
    return get_subset_tf_dataset(pairs, batch_size, epochs, **kwargs)


def subset_size(voc_root: str | Path, subset: str) -> int:
    """Number of images in a subset."""
    return len(split_ids(voc_dirs(voc_root)[2], subset))
