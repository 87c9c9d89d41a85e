"""Forward and backward of DeepLab v3's 3x3 convolutions alone, dilated or not, under each kernel.

    python bench/bench_dilated.py [--size 384] [--batch-size 4]
        [--kernels native,portable,taps,winograd] [--precision float32] [--repeats 5] [--out FILE]

The layers are those of the product at output stride 16: conv5's 3x3 rate-2 conv (512 -> 512)
and ASPP's three 3x3 branches at rates 6, 12 and 18 (2048 -> 256), on the (size / 16)-square
feature map, and ResNet-50's undilated 3x3s of conv4, conv3 and conv2 (256, 128 and 64
channels on maps 1, 2 and 4 times that side). Each dilated-conv kernel
(kernels.dilated_conv_kernel: native, portable, taps) is forced through DEEPLAB_DILATED_CONV with
Winograd off (DEEPLAB_WINOGRAD=off), and `winograd` forces Winograd's F(4x4, 3x3)
(kit/kernels.py) on; the undilated convs run `native` (the direct conv) and `winograd` only.
Each is timed as one training step of the layer alone (forward, a sum of
squares, gradients of the input and the kernel), best of `--repeats` after two warm-up calls.
`auto` names the kernel a training step takes by default here, as the layer itself chooses it
(BiasConv2D.kernel_for).
A conv with most of its taps in bounds (conv5's: 0.89) trains with native or portable even
when taps is asked for (kernels.TAPS_BELOW_IN_BOUNDS), so its taps column is that fallback.
oneDNN is on unless TF_ENABLE_ONEDNN_OPTS=0, as in train.py; without it TensorFlow has no
native dilated gradient, and that cell says "unsupported".
The speed decides which kernel `auto` takes on which CPU (docs/performance.md). Prints JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Iterator

from common import choices, emit, machine

from kit import runtime

runtime.prefer_onednn()  # as train.py, unless TF_ENABLE_ONEDNN_OPTS is already set

import tensorflow as tf  # noqa: E402

import model as deeplab  # noqa: E402
from kit import kernels  # noqa: E402

# (name, channels in, channels out, rate, map side over size / 16)
LAYERS = (("conv5 3x3 rate 2", 512, 512, 2, 1), ("ASPP rate 6", 2048, 256, 6, 1),
          ("ASPP rate 12", 2048, 256, 12, 1), ("ASPP rate 18", 2048, 256, 18, 1),
          ("conv4 3x3", 256, 256, 1, 1), ("conv3 3x3", 128, 128, 1, 2), ("conv2 3x3", 64, 64, 1, 4))
KERNELS = ("native", "portable", "taps", "winograd")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=384, help="the model's input size; the map is size / 16")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated, of {', '.join(KERNELS)}")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=5, help="timed calls per layer and kernel (the best counts)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    args.kernels = choices(p, "--kernels", args.kernels, KERNELS)
    if args.size < 16 or args.size % 16 or args.repeats < 1 or args.batch_size < 1:
        p.error("--size must be a multiple of 16, --repeats and --batch-size at least 1")
    return args


@contextlib.contextmanager
def forced_kernel(kernel: str | None) -> Iterator[None]:
    """DilatedConv2D layers traced inside take `kernel` ("winograd": Winograd's F(4x4, 3x3),
    else that dilated-conv kernel with Winograd off; None: the defaults, unset); the settings
    before are restored after."""
    settings = {kernels.DILATED_CONV_ENV: None, kernels.WINOGRAD_ENV: None}
    if kernel == "winograd":
        settings[kernels.WINOGRAD_ENV] = "on"
    elif kernel is not None:
        settings.update({kernels.DILATED_CONV_ENV: kernel, kernels.WINOGRAD_ENV: "off"})
    before = {name: os.environ.get(name) for name in settings}
    try:
        for name, value in settings.items():
            _set(name, value)
        yield
    finally:
        for name, value in before.items():
            _set(name, value)


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def time_layer(kernel: str, shape: tuple, filters: int, rate: int, dtype: str, repeats: int) -> float | str:
    """Best ms of one training step of a DilatedConv2D forced to `kernel`, or "unsupported"."""
    with forced_kernel(kernel):  # the settings are read when the step is traced
        return _time_step(shape, filters, rate, dtype, repeats)


def auto_kernel(shape: tuple, filters: int, rate: int, dtype: str) -> str:
    """The kernel a training step takes here by default for this layer (the layer's own choice)."""
    layer = deeplab.DilatedConv2D(filters, 3, padding="same", dilation_rate=rate, use_bias=False, dtype=dtype)
    layer.build(shape)
    with forced_kernel(None):
        return layer.kernel_for(tf.TensorSpec(shape), training=True)


def _time_step(shape: tuple, filters: int, rate: int, dtype: str, repeats: int) -> float | str:
    x = tf.random.normal(shape, dtype=dtype)  # (B, h, w, C_in)
    layer = deeplab.DilatedConv2D(filters, 3, padding="same", dilation_rate=rate, use_bias=False, dtype=dtype)
    layer.build(shape)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)  # (B, h, w, filters)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        return tape.gradient(loss, [x, layer.kernel])

    try:
        for _ in range(2):
            step()
    except tf.errors.InvalidArgumentError:  # Eigen's "do not yet support dilation rates larger than 1"
        return "unsupported"
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        [g.numpy() for g in step()]
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


def main(args):
    rows = []
    for name, c_in, filters, rate, scale in LAYERS:
        side = args.size // 16 * scale
        shape = (args.batch_size, side, side, c_in)
        row = {"layer": name, "map": side, "in_bounds": round(
            kernels.in_bounds_fraction((side, side), (3, 3), (rate, rate)), 2),
            "winograd_multiplies": kernels.winograd_multiplies((side, side), (rate, rate)),
            "auto": auto_kernel(shape, filters, rate, args.precision)}
        for kernel in args.kernels:
            if rate == 1 and kernel in ("portable", "taps"):
                continue  # an undilated conv is the direct conv under every dilated-conv kernel
            if kernel == "winograd" and args.precision != "float32":
                row[kernel] = "float32 only"
                continue
            row[kernel] = time_layer(kernel, shape, filters, rate, args.precision, args.repeats)
        rows.append(row)
    emit({"benchmark": "dilated convolutions, forward and backward, ms", "machine": machine(),
          "size": args.size, "batch_size": args.batch_size, "precision": args.precision,
          "repeats": args.repeats, "layers": rows}, args.out)


if __name__ == "__main__":
    main(parse_args())
