"""The tf.data input pipeline: decoding (masks by colour), augmentation, batching.

    from kit import data
    import pipeline
    tree = data.resolve_tree("data")
    train = pipeline.tree_dataset(tree, "train", batch_size=8, epochs=None, input_size=(384, 384),
                                  resize_to_before_crop=(444, 444), augmentation=True, shuffle=True, seed=0)

Elements are (image, mask): image float32 (B, H, W, 3), RGB in [0, 255] (IMAGE_RANGE; the
model applies its backbone's own preprocessing); mask int32 (B, H, W) with class indices
0..C-1 of the tree's class table and IGNORE_LABEL (255) for void pixels. Geometric ops act on
both, photometric ops on the image only, and masks are only ever resized with nearest
neighbour. The chapter's `get_subset_filenames` and `get_subset_tf_dataset` keep their names.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from kit import data
from kit.data import ClassTable, DataError
from kit.datasets import IMAGENET_MEAN_RGB
from kit.voc import IGNORE_LABEL

IMAGE_RANGE = (0.0, 255.0)  # float32 RGB; documented once, used everywhere
MEAN_RGB = IMAGENET_MEAN_RGB  # the padding colour: 0 after ResNet-50's preprocessing
AUTOTUNE = tf.data.AUTOTUNE


def get_subset_filenames(orig_dir, seg_dir, subset_dir, subset: str, val_fraction: float = data.DEFAULT_VAL_FRACTION):
    """Yield (jpg_path, png_path) pairs of a subset (data.SUBSETS, by exact name), as strings."""
    for image_id in data.subset_ids(Path(subset_dir), subset, val_fraction):
        yield str(Path(orig_dir) / f"{image_id}.jpg"), str(Path(seg_dir) / f"{image_id}.png")


def load_example(jpg_path: str, png_path: str, classes: ClassTable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair with PIL: image (H, W, 3) uint8 RGB, mask (H, W) uint8 class indices.

    The mask is decoded through `classes` (VOC's by default, see data.read_mask): by colour, a
    palettized PNG through its own palette and an RGB one by its colours (tf.io.decode_png
    would give colours, not classes); by value for a data set whose masks hold ids (ADE20K,
    Cityscapes, CamVid, index PNGs); labelme's .npy arrays as they are. Grayscale and CMYK
    images become RGB; a photo is turned upright by its EXIF orientation, as annotation tools
    show it. Every failure is a DataError naming the file.
    """
    classes = classes or ClassTable.voc()
    try:
        image = data.read_rgb(jpg_path)  # uint8, upright
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... all mean "bad file"
        raise DataError(f"cannot read image {jpg_path}: {type(err).__name__}: {err}") from None
    try:
        mask = data.read_mask(png_path, classes)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read mask {png_path}: {type(err).__name__}: {err}") from None
    if mask.shape != image.shape[:2]:
        turned = (" (the image's EXIF orientation turns it upright: the mask was drawn on the stored, "
                  "sideways pixels; export it again from the upright image)"
                  if mask.shape == image.shape[1::-1] and data.exif_rotates(jpg_path) else "")
        raise DataError(f"mask {png_path} is {mask.shape[1]}x{mask.shape[0]} but image {jpg_path} is "
                        f"{image.shape[1]}x{image.shape[0]}{turned}")
    return image, mask


def check_files(pairs: list[tuple[str, str]], classes: ClassTable, what: str = "files",
                progress: bool = True) -> np.ndarray:
    """Decode every pair once, before training; raise one DataError listing every bad file.

    Otherwise a bad file in the training list fails at its first step inside a long TensorFlow
    trace, and one in the validation list only after a whole epoch. Threads overlap PIL's
    decoding (it releases the GIL). Returns the (C,) int64 pixel count of each class over
    the masks (for dataset-level class weights).
    """
    problems, counts = [], np.zeros(classes.num_classes, np.int64)

    def check(pair):
        try:
            _, mask = load_example(*pair, classes)
            return np.bincount(mask[mask < classes.num_classes], minlength=classes.num_classes)
        except DataError as err:
            problems.append(str(err))
            return 0

    workers = min(8, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for found in tqdm(pool.map(check, pairs), total=len(pairs), desc=f"check {what}", unit="file",
                          disable=not progress, leave=False):
            counts += found
    if problems:
        shown = "\n  ".join(sorted(problems)[:5])
        raise DataError(f"{len(problems)} of the {len(pairs)} {what} cannot be used:\n  {shown}"
                        + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""))
    return counts


def _decode(jpg_path, png_path, classes: ClassTable):
    """Graph wrapper of `load_example`: image (H, W, 3) uint8, mask (H, W) uint8."""
    def load(jpg, png):
        return load_example(jpg.decode(), png.decode(), classes)

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


def _window(image, mask, size, seed):
    """One random (h, w) window cut from image (H, W, 3) float32 and mask (H, W) uint8 together.

    Cropping the two stacked as channels means they cannot be cut at different places (the
    chapter called crop_to_bounding_box with mismatched arguments).
    """
    h, w = size
    stacked = tf.concat([image, tf.cast(mask, tf.float32)[..., None]], axis=-1)
    window = tf.image.stateless_random_crop(stacked, (h, w, 4), seed=seed)
    return window[..., :3], tf.cast(tf.round(window[..., 3]), tf.uint8)


def scale_and_crop(image, mask, seeds, crop_size, base_size: int, scale_range):
    """Random scale, then pad and crop: the references' RandomResize + RandomCrop.

    The image is resized so its shorter side is s * base_size, s uniform in scale_range
    (aspect kept; mask by nearest neighbour); where it is then smaller than the crop, it is
    padded at the bottom and right with the ImageNet mean colour (0 after the model's
    preprocessing) and the mask with IGNORE_LABEL, so padding adds nothing to the loss.
    image (H, W, 3) uint8, mask (H, W) uint8, seeds (2, 2) -> (h, w, 3) float32, (h, w) uint8.
    """
    ch, cw = crop_size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    s = tf.random.stateless_uniform((), seeds[0], scale_range[0], scale_range[1])
    new_size = tf.maximum(tf.cast(tf.round(shape * s * base_size / tf.reduce_min(shape)), tf.int32), 1)
    image, mask = _resize_pair(image, mask, new_size)
    pad_h, pad_w = tf.maximum(ch - new_size[0], 0), tf.maximum(cw - new_size[1], 0)
    mean = tf.constant(MEAN_RGB, tf.float32)
    image = tf.pad(image - mean, [[0, pad_h], [0, pad_w], [0, 0]]) + mean
    mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_LABEL)
    return _window(image, mask, crop_size, seeds[1])


def augment_example(image, mask, seed, input_size, resize_to_before_crop, color_jitter: bool = True,
                    scale_range=None, hue=0.1, brightness=0.1, contrast=(0.8, 1.2)):
    """Random geometry (see below), horizontal flip and (optionally) colour jitter of one example.

    Geometry: with `scale_range`, scale_and_crop (base size resize_to_before_crop); without,
    the chapter's coin flip between enlarging to resize_to_before_crop and cutting a random
    input_size window, or resizing to input_size.

    Args:
        image: (H, W, 3) uint8; mask: (H, W) uint8; seed: (2,) int64 for the stateless ops.
    Returns:
        image (h, w, 3) float32 in IMAGE_RANGE, mask (h, w) uint8, (h, w) = input_size.
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)  # (6, 2): one per random step
    h, w = input_size

    def crop():
        big_image, big_mask = _resize_pair(image, mask, resize_to_before_crop)
        return _window(big_image, big_mask, input_size, seeds[1])

    def resize():
        return _resize_pair(image, mask, input_size)

    if scale_range is not None:
        image_f, mask_f = scale_and_crop(image, mask, seeds[:2], input_size, resize_to_before_crop[0], scale_range)
    else:
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


def decoded_dataset(pairs: Iterable[tuple[str, str]], classes: ClassTable | None = None,
                    check_files: bool = True) -> tf.data.Dataset:
    """(image uint8 (H, W, 3), mask uint8 (H, W)) per file pair, decoded in parallel, in order."""
    pairs = list(pairs)
    if not pairs:
        raise DataError("no files in this subset")
    if check_files:
        missing = [p for pair in pairs for p in pair if not Path(p).is_file()]
        if missing:
            raise DataError(f"{len(missing)} file(s) of this subset are missing, first: {missing[0]}")
    jpgs, pngs = zip(*pairs)
    ds = tf.data.Dataset.from_tensor_slices((list(jpgs), list(pngs)))
    decode = functools.partial(_decode, classes=classes or ClassTable.voc())
    return ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)


def get_subset_tf_dataset(subset_filename_gen_func: Callable | Iterable, batch_size: int, epochs: int | None,
                          input_size=(256, 256), output_size=None, resize_to_before_crop=None,
                          augmentation: bool = False, shuffle: bool = False, seed: int | None = None,
                          cache: bool | str = True, color_jitter: bool = True,
                          classes: ClassTable | None = None, scale_range=None) -> tf.data.Dataset:
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
        classes: the class table masks are decoded with (default VOC's).
        scale_range: (lo, hi): with augmentation, random scale jitter around
            resize_to_before_crop, padded and cropped (scale_and_crop), instead of the
            chapter's enlarge-and-crop.
    """
    if augmentation and resize_to_before_crop is None:
        raise ValueError("augmentation needs resize_to_before_crop (the size to enlarge to before cropping)")
    if augmentation and input_size is None:
        raise ValueError("augmentation needs an input_size to crop to")
    if input_size is None and batch_size != 1:
        raise ValueError("original-resolution batches need batch_size=1: image sizes differ")
    if augmentation and not scale_range and any(b < i for b, i in zip(resize_to_before_crop, input_size)):
        raise ValueError(f"resize_to_before_crop {resize_to_before_crop} is smaller than input_size {input_size}")
    pairs = subset_filename_gen_func() if callable(subset_filename_gen_func) else subset_filename_gen_func
    pairs = list(pairs)
    ds = decoded_dataset(pairs, classes)
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    if shuffle:
        ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat(epochs) if epochs != 1 else ds
    if augmentation:
        # A deterministic stream of seeds for the stateless random ops: reproducible for a seed.
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        augment = functools.partial(augment_example, input_size=tuple(input_size),
                                    resize_to_before_crop=tuple(resize_to_before_crop), color_jitter=color_jitter,
                                    scale_range=tuple(scale_range) if scale_range else None)
        ds = tf.data.Dataset.zip((ds, seeds)).map(lambda ex, s: augment(*ex, s), num_parallel_calls=AUTOTUNE)
    elif input_size is not None:
        ds = ds.map(functools.partial(resize_example, input_size=tuple(input_size)), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda image, mask: (tf.cast(image, tf.float32), mask))
    ds = ds.map(functools.partial(_finish, output_size=output_size), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def tree_dataset(tree: data.Tree, subset: str, batch_size: int, epochs: int | None = 1, **kwargs) -> tf.data.Dataset:
    """`get_subset_tf_dataset` for a subset of a data tree, decoded with its class table."""
    return get_subset_tf_dataset(tree.pairs(subset), batch_size, epochs, classes=tree.classes, **kwargs)
