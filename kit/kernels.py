"""Convolution kernels that do fewer multiplications than TensorFlow's CPU kernels.

`winograd_conv3x3` computes a stride-1 "same" 3x3 convolution, dilated or not, by Winograd's
minimal filtering F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016): each 4x4 block of outputs comes from a 6x6 block of inputs with 36
multiplications per channel pair instead of 144. The 36 products are 36 matmuls, one per
position in the transformed tile, over every tile of the batch; the transforms before and
after them are small linear maps compiled by XLA into a few passes over memory. The backward
pass is two more batched matmuls and the transposed transforms, which XLA derives from the
forward ones; being linear, they keep nothing from the forward pass but the tiles the
matmuls' gradients need.

TensorFlow's CPU convolutions (oneDNN or Eigen) run at about the dense matmul peak, so they
cannot go faster without doing fewer multiplications; this kernel does a quarter of them.
Measured on a 2-core AVX2 EPYC (first-generation Zen), float32, batch 4, forward and
backward, ms (docs/performance.md): conv5's rate-2 512 -> 512 on 24x24, 223 against 451
with oneDNN's kernel and 302 against 488 without oneDNN; conv4's 256 -> 256 on 24x24, 69
against 122 (88 against 131). Its results differ from a direct convolution's by rounding,
about 1e-5 of the output's range in float32, which is why bfloat16 convs never take it.

The choice, by `winograd_applies`, is made when a layer is traced, for training steps only:
inference and exported graphs keep one native convolution, so `.keras` files, SavedModels and
TFLite files are unchanged.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow as tf

from kit.errors import ConfigError

WINOGRAD_ENV = "DEEPLAB_WINOGRAD"
WINOGRAD_CHOICES = ("auto", "on", "off")
OUT_TILE = 4  # outputs per tile side; the input tile is OUT_TILE + 2 = 6 (a 3x3 kernel)
IN_TILE = OUT_TILE + 2
# "auto" takes Winograd where it needs at most this share of the multiplications of the taps
# that read inside the map (the taps kernel's work): on 24x24 maps 0.25 at rates 1 and 2, 0.36
# for ASPP's rate 6, 2.25 for its rate 12 (a 2x2 sub-grid fills a quarter of a 4x4 tile).
WINOGRAD_MAX_SHARE = 0.5
# conv2's 64-channel 3x3s on 96x96 maps trained slower with it without oneDNN (209 against
# 160 ms), faster with oneDNN (119 against 146 ms): small matmuls, large transforms.
WINOGRAD_MIN_CHANNELS = 128

# F(4, 3) with interpolation points 0, 1, -1, 2, -2 and infinity (Lavin and Gray, section 4.1).
# y = A^T [(G g G^T) * (B^T d B)] A for a 6x6 input tile d and a 3x3 kernel g.
_BT = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], np.float64)  # (6, 6)
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float64)  # (6, 3)
_AT = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)  # (4, 6)


def winograd_choice() -> str:
    """DEEPLAB_WINOGRAD: "auto" (default), "on" (every conv it can compute) or "off"."""
    choice = os.environ.get(WINOGRAD_ENV, "auto")
    if choice not in WINOGRAD_CHOICES:
        raise ConfigError(f"{WINOGRAD_ENV}={choice!r}: expected one of {WINOGRAD_CHOICES}")
    return choice


@functools.cache
def xla_compiles() -> bool:
    """Whether this TensorFlow build can JIT-compile a function with XLA on the CPU (the
    pip wheels for x86 and ARM Linux can; the transforms need it to be fast)."""
    try:
        with tf.init_scope():  # eagerly, even when first asked while a training step is traced
            return float(tf.function(lambda v: v + 1, jit_compile=True)(tf.constant(1.0))) == 2.0
    except (tf.errors.OpError, ValueError, NotImplementedError):
        return False


def winograd_setting(compute_dtype: str) -> str:
    """What train.py prints about the 3x3 convs of a training step in `compute_dtype`."""
    choice = winograd_choice()
    if choice == "off":
        return f"direct ({WINOGRAD_ENV}=off)"
    if compute_dtype != "float32":
        return f"direct (Winograd is for float32, not {compute_dtype})"
    if not xla_compiles():
        return "direct (no XLA on this CPU for the Winograd transforms)"
    if choice == "on":
        return f"Winograd F(4x4, 3x3) wherever it can run ({WINOGRAD_ENV}=on)"
    if tf.config.list_physical_devices("GPU"):
        return "direct (the GPU's own kernels)"
    return f"Winograd F(4x4, 3x3) where it does at most half the multiplications, {WINOGRAD_MIN_CHANNELS}+ channels"


def _inside_xla() -> bool:
    """Whether the graph being traced is compiled by XLA as a whole (a jit_compile function)."""
    from tensorflow.python.ops import control_flow_util  # TensorFlow's own test for this

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _cover(size: int, rate: int) -> tuple[int, int]:
    """(sub-grid side, tiles per sub-grid side) for `size` pixels dilated by `rate`: a rate-r
    conv is r ordinary convs on the sub-grids of every r-th pixel, each of ceil(size / r)."""
    sub = -(-size // rate)
    return sub, -(-sub // OUT_TILE)


def winograd_multiplies(size, rate) -> float | None:
    """Multiplications per output pixel and channel pair of `winograd_conv3x3` on an (h, w)
    map at `rate`, padding of partial tiles included; None when the size is unknown.
    A direct 3x3 conv does 9; on 24x24, 2.25 at rates 1, 2 and 6, 9 at rate 12."""
    if any(s is None for s in size):
        return None
    per_pixel = 1.0
    for n, r in zip(size, rate):
        _, tiles = _cover(n, r)
        per_pixel *= IN_TILE * tiles * r / n  # r sub-grids of `tiles` 6-wide input tiles
    return per_pixel


def winograd_applies(layer, inputs, training: bool, in_bounds: float | None) -> bool:
    """Whether a training step computes Conv2D `layer` on `inputs` by `winograd_conv3x3`.

    It can for a float32 channels-last 3x3 conv with stride 1, "same" padding and one
    dilation rate for both axes on a map of
    known size, where XLA compiles, in a step that XLA does not compile as a whole (`train.py
    --xla`: XLA then plans the convs itself, and it spent minutes constant-folding the
    transforms of a forced rate-12 conv on a 4x4 map). "auto" then takes it on a CPU, with at least
    WINOGRAD_MIN_CHANNELS in and out, where it does at most WINOGRAD_MAX_SHARE of the
    multiplications of the taps that read inside the map (`in_bounds`, the fraction of taps
    that do; None when unknown). "on" takes it wherever it can (tests, benchmarks); "off" never.
    """
    choice = winograd_choice()
    size = tuple(inputs.shape[1:3])
    can = (training and choice != "off" and layer.compute_dtype == "float32"
           and layer.data_format == "channels_last" and tuple(layer.kernel_size) == (3, 3)
           and tuple(layer.strides) == (1, 1) and layer.padding == "same" and layer.groups == 1
           and layer.dilation_rate[0] == layer.dilation_rate[1] and None not in size and not _inside_xla())
    if not can:
        return False
    if not xla_compiles():
        if choice == "on":
            raise RuntimeError(f"{WINOGRAD_ENV}=on, but this TensorFlow cannot compile with XLA on the CPU, "
                               f"which the Winograd transforms need: set {WINOGRAD_ENV}=auto or off")
        return False
    if choice == "on":
        return True
    multiplies = winograd_multiplies(size, layer.dilation_rate)
    return (not tf.config.list_physical_devices("GPU")
            and min(inputs.shape[-1], layer.filters) >= WINOGRAD_MIN_CHANNELS
            and multiplies <= WINOGRAD_MAX_SHARE * 9 * (1.0 if in_bounds is None else in_bounds))


def _tile_rows(x, axis: int, tiles: int):
    """The 6 overlapping rows of each tile along `axis`, stacked first: (6, ...) with `tiles`
    tiles on `axis`. Row s of tile t is x's index 4t + s along `axis`."""
    rows = []
    for s in range(IN_TILE):
        index = [slice(None)] * x.shape.rank
        index[axis] = slice(s, s + OUT_TILE * (tiles - 1) + 1, OUT_TILE)
        rows.append(x[tuple(index)])
    return tf.stack(rows)


def _left_multiply(matrix: np.ndarray, x):
    """matrix @ x over x's first axis: (r, k) and (k, ...) -> (r, ...), one small matmul."""
    shape = tf.shape(x)
    out = tf.matmul(tf.constant(matrix, x.dtype), tf.reshape(x, (matrix.shape[1], -1)))
    return tf.reshape(out, tf.concat([[matrix.shape[0]], shape[1:]], 0))


def _space_to_batch(x, rate: int):
    """(B, H, W, C) -> (B * r * r, ceil(H / r), ceil(W / r), C): the rate-r sub-grids, each
    padded at the far edge to the same size (padding a "same" conv reads anyway)."""
    if rate == 1:
        return x
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    hs, ws = _cover(h, rate)[0], _cover(w, rate)[0]
    x = tf.pad(x, [[0, 0], [0, hs * rate - h], [0, ws * rate - w], [0, 0]])
    x = tf.reshape(x, (-1, hs, rate, ws, rate, c))
    return tf.reshape(tf.transpose(x, (0, 2, 4, 1, 3, 5)), (-1, hs, ws, c))


def _batch_to_space(y, rate: int, h: int, w: int):
    """The inverse of `_space_to_batch`, cut back to (B, h, w, K)."""
    if rate == 1:
        return y[:, :h, :w]
    hs, ws, k = y.shape[1], y.shape[2], y.shape[3]
    y = tf.reshape(y, (-1, rate, rate, hs, ws, k))
    y = tf.reshape(tf.transpose(y, (0, 3, 1, 4, 2, 5)), (-1, hs * rate, ws * rate, k))
    return y[:, :h, :w]


@tf.function(jit_compile=True)
def _input_tiles(x, rate: int):
    """x (B, H, W, C) -> V (36, P, C): every tile's B^T d B, P = B * r * r * tiles_h * tiles_w."""
    x = _space_to_batch(x, rate)
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    th, tw = -(-h // OUT_TILE), -(-w // OUT_TILE)
    # One pixel of "same" padding before, and enough after to fill the last tile.
    x = tf.pad(x, [[0, 0], [1, th * OUT_TILE + 1 - h], [1, tw * OUT_TILE + 1 - w], [0, 0]])
    v = _left_multiply(_BT, _tile_rows(x, 1, th))  # (6, B', th, W + pad, C)
    v = _left_multiply(_BT, _tile_rows(v, 3, tw))  # (6 across, 6 down, B', th, tw, C)
    return tf.reshape(v, (IN_TILE * IN_TILE, -1, c))


@tf.function(jit_compile=True)
def _kernel_tiles(kernel):
    """kernel (3, 3, C, K) -> U (36, C, K): G g G^T, ordered as `_input_tiles` orders V."""
    g = tf.constant(_G, kernel.dtype)
    u = tf.einsum("bj,ai,ijck->back", g, g, kernel)  # (6 across, 6 down, C, K)
    return tf.reshape(u, (IN_TILE * IN_TILE, kernel.shape[2], kernel.shape[3]))


@tf.function(jit_compile=True)
def _output_tiles(m, rate: int, h: int, w: int):
    """M (36, P, K) -> y (B, h, w, K): every tile's A^T m A, put back in place."""
    k = m.shape[-1]
    (hs, th), (ws, tw) = _cover(h, rate), _cover(w, rate)
    y = tf.reshape(m, (IN_TILE, IN_TILE, -1))  # (6 across, 6 down, P * K)
    y = _left_multiply(_AT, y)  # (4 across, 6 down, P * K)
    y = _left_multiply(_AT, tf.transpose(y, (1, 0, 2)))  # (4 down, 4 across, P * K)
    y = tf.reshape(y, (OUT_TILE, OUT_TILE, -1, th, tw, k))  # (down, across, B', th, tw, K)
    y = tf.reshape(tf.transpose(y, (2, 3, 0, 4, 1, 5)), (-1, th * OUT_TILE, tw * OUT_TILE, k))
    return _batch_to_space(y[:, :hs, :ws], rate, h, w)


def winograd_conv3x3(x, kernel, rate=(1, 1)):
    """A stride-1 "same" 3x3 conv dilated by `rate`, by Winograd's F(4x4, 3x3).

    x: (B, H, W, C) with H and W known, kernel: (3, 3, C, K) -> (B, H, W, K). The rate must be
    the same along both axes (every dilated conv of this model's is).
    """
    rate = tuple(int(r) for r in rate)
    if rate[0] != rate[1]:
        raise ValueError(f"winograd_conv3x3 takes one dilation rate for both axes, got {rate}")
    if tuple(kernel.shape[:2]) != (3, 3):
        raise ValueError(f"winograd_conv3x3 takes a 3x3 kernel, got {tuple(kernel.shape)}")
    h, w = x.shape[1], x.shape[2]
    rate = rate[0]

    # The transforms are linear, so their gradients need no values saved from the forward
    # pass; TensorFlow's automatic gradient of a compiled function would keep its
    # intermediates alive until the backward pass.
    @tf.custom_gradient
    def input_tiles(x):
        def grad(dv):
            return _input_tiles_transposed(x, dv, rate)

        return _input_tiles(x, rate), grad

    @tf.custom_gradient
    def output_tiles(m):
        def grad(dy):
            return _output_tiles_transposed(m, dy, rate, h, w)

        return _output_tiles(m, rate, h, w), grad

    m = tf.matmul(input_tiles(x), _kernel_tiles(kernel))  # (36, P, K)
    return output_tiles(m)


@tf.function(jit_compile=True)
def _input_tiles_transposed(x, dv, rate: int):
    """dv (36, P, C) -> dx (B, H, W, C): the transposed input transform. x only gives the shape
    (XLA drops the forward pass, whose values the gradient of a linear map does not use)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        v = _input_tiles.python_function(x, rate)
    return tape.gradient(v, x, output_gradients=dv)


@tf.function(jit_compile=True)
def _output_tiles_transposed(m, dy, rate: int, h: int, w: int):
    """dy (B, h, w, K) -> dm (36, P, K): the transposed output transform."""
    with tf.GradientTape() as tape:
        tape.watch(m)
        y = _output_tiles.python_function(m, rate, h, w)
    return tape.gradient(y, m, output_gradients=dy)
