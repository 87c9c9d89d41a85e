"""Train-pipeline throughput: first pass (decode + cache) and steady state, against a baseline.

    python bench/bench_pipeline.py [--data-dir data/bench] [--input-size 384] [--batch-size 8]

Measures, in one run on the same synthetic VOC-sized images (200-500 px):
- product: pipeline.get_subset_tf_dataset with augmentation (PIL decode once, cached);
- chapter-style baseline: PIL through tf.numpy_function on every pass, no cache, then the
  same augmentation ops;
- a TF-native decoder (tf.io.decode_jpeg, tf.io.decode_png then colours mapped back to
  palette indices in the graph), first pass only, to compare decoders.
Prints JSON with images/s for each.
"""
from __future__ import annotations

import argparse
import functools
import time

from common import bench_voc_root, emit, machine

import numpy as np
import tensorflow as tf

from kit import data
import pipeline
from kit.voc import PALETTE


def _images_per_s(ds, batches: int, batch_size: int) -> float:
    it = iter(ds)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def _tf_native_decode(jpg, png):
    """Graph-only decoding: palette PNG colours back to indices through a 2**9 lookup table."""
    image = tf.io.decode_jpeg(tf.io.read_file(jpg), channels=3)
    rgb = tf.cast(tf.io.decode_png(tf.io.read_file(png), channels=3), tf.int32)
    # VOC colours use only the top three bits of each channel for indices < 256.
    key = (rgb[..., 0] // 32) * 64 + (rgb[..., 1] // 32) * 8 + rgb[..., 2] // 32
    table = np.zeros(512, np.uint8)
    for index, (r, g, b) in enumerate(PALETTE.astype(int)):
        table[(r >> 5) * 64 + (g >> 5) * 8 + (b >> 5)] = index
    return image, tf.gather(tf.constant(table), key)


def _augmented(ds, args):
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    augment = functools.partial(pipeline.augment_example, input_size=(args.input_size,) * 2,
                                resize_to_before_crop=(args.crop_from,) * 2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(lambda ex, s: augment(*ex, s), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(args.batch_size).prefetch(tf.data.AUTOTUNE)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data/bench", help="where the synthetic images are written")
    p.add_argument("--num-images", type=int, default=240, help="training images to measure on")
    p.add_argument("--input-size", type=int, default=384)
    p.add_argument("--crop-from", type=int, default=444, help="resize_to_before_crop")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steady-epochs", type=int, default=3, help="passes measured after the first")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(args):
    root = bench_voc_root(args.data_dir, args.num_images)
    pairs = data.Tree(root, data.ClassTable.voc()).pairs("train")
    n = len(pairs) // args.batch_size  # whole batches per pass
    size = (args.input_size, args.input_size)

    product = pipeline.get_subset_tf_dataset(pairs, args.batch_size, None, input_size=size,
                                             resize_to_before_crop=(args.crop_from,) * 2, augmentation=True,
                                             shuffle=True, seed=0)
    it = iter(product)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    first = n * args.batch_size / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n * args.steady_epochs):
        next(it)
    steady = n * args.steady_epochs * args.batch_size / (time.perf_counter() - t0)

    baseline = _augmented(pipeline.decoded_dataset(pairs).repeat(), args)  # decodes on every pass
    baseline_rate = _images_per_s(baseline, n * (1 + args.steady_epochs), args.batch_size)

    jpgs, pngs = map(list, zip(*pairs))
    native = tf.data.Dataset.from_tensor_slices((jpgs, pngs)).map(_tf_native_decode, num_parallel_calls=tf.data.AUTOTUNE)
    pil = pipeline.decoded_dataset(pairs)
    # The native decoder is only worth comparing if it reads the same labels.
    native_masks_match = all(np.array_equal(m.numpy(), pipeline.load_example(*pair)[1])
                             for (_, m), pair in zip(native.take(20), pairs[:20]))
    decode_only = {name: _images_per_s(ds.batch(1).prefetch(tf.data.AUTOTUNE), len(pairs), 1)
                   for name, ds in (("pil_numpy_function", pil), ("tf_native", native))}

    emit({"benchmark": "train pipeline", "machine": machine(), "images": len(pairs),
          "input_size": args.input_size, "resize_to_before_crop": args.crop_from, "batch_size": args.batch_size,
          "product_images_per_s": {"first_pass": round(first, 1), "steady_state": round(steady, 1)},
          "chapter_baseline_images_per_s": round(baseline_rate, 1),
          "steady_state_speedup_vs_baseline": round(steady / baseline_rate, 2),
          "decode_only_images_per_s": {k: round(v, 1) for k, v in decode_only.items()},
          "tf_native_masks_match_pil": native_masks_match}, args.out)


if __name__ == "__main__":
    main(parse_args())
