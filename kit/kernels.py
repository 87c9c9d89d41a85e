"""The CPU kernels DeepLab's convolutions train with, and the choice among them (model.py's
layers ask, when a training step is traced; nothing here knows the network's shape).

- `winograd_conv3x3` and `winograd_applies`: fewer multiplications for wide 3x3s (below).
- The dilated convs' direct kernels and `dilated_conv_kernel`, their choice by capability
  (DEEPLAB_DILATED_CONV): `tap_dilated_conv2d` (only the taps that read inside the map),
  `portable_dilated_conv2d` (gradients where TensorFlow has none), native `tf.nn.conv2d`.
- Gradients TensorFlow computes slowly on CPUs: `matmul_gradient_conv1x1` (a bfloat16 1x1
  conv's kernel gradient) and `add_bias_matvec` (a bias gradient).
- `onednn_enabled`: whether TensorFlow's CPU kernels are oneDNN's in this process.

Winograd's F(4x4, 3x3):
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

from kit import runtime
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


def check_settings() -> None:
    """A ConfigError now for a bad DEEPLAB_DILATED_CONV or DEEPLAB_WINOGRAD value.

    The layers read both when a step is traced, and TensorFlow re-raises an error from inside a
    traced function wrapped in its own type (StagingError), which entry points cannot tell from
    a bug; so whatever builds, loads or runs a model asks here first (train.py, load_model)."""
    dilated_conv_choice()
    winograd_choice()


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


def winograd_applies(layer, inputs, training: bool) -> bool:
    """Whether a training step computes Conv2D `layer` on `inputs` by `winograd_conv3x3`.

    It can for a float32 channels-last 3x3 conv with stride 1, "same" padding and one
    dilation rate for both axes on a map of known size, where XLA compiles, in a step that XLA
    does not compile as a whole (`train.py --xla`: XLA then plans the convs itself, and it spent
    minutes constant-folding the transforms of a forced rate-12 conv on a 4x4 map). "auto" then
    takes it on a CPU, with at least WINOGRAD_MIN_CHANNELS in and out, where it does at most
    WINOGRAD_MAX_SHARE of the multiplications of the taps that read inside the map
    (`in_bounds_fraction` of them). "on" takes it wherever it can (tests, benchmarks); "off" never,
    and neither does DILATED_CONV_ENV=keras (TensorFlow's stock kernels throughout).
    """
    choice = winograd_choice()
    if dilated_conv_choice() == "keras":
        return False
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
    # The size is known here, so neither count is None.
    multiplies = winograd_multiplies(size, layer.dilation_rate)
    in_bounds = in_bounds_fraction(size, layer.kernel_size, layer.dilation_rate)
    return (not tf.config.list_physical_devices("GPU")
            and min(inputs.shape[-1], layer.filters) >= WINOGRAD_MIN_CHANNELS
            and multiplies <= WINOGRAD_MAX_SHARE * 9 * in_bounds)


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


# --- the direct convs' CPU kernels: dilated taps, portable gradients, 1x1 and bias gradients ---

DILATED_CONV_KERNELS = ("auto", "native", "taps", "portable", "keras")
# Which kernel DilatedConv2D uses; "auto" decides by capability (see dilated_conv_kernel).
DILATED_CONV_ENV = "DEEPLAB_DILATED_CONV"


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU kernels through oneDNN in this process.

    TensorFlow decides once, when it loads, from TF_ENABLE_ONEDNN_OPTS, and when that is unset,
    from the CPU: on by default only for x86 CPUs with AVX-512-class features.
    """
    from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own capability query

    return bool(_pywrap_util_port.IsMklEnabled())


def dilated_conv_choice() -> str:
    """DILATED_CONV_ENV's value, "auto" when unset; a ConfigError (which entry points print as
    `error: ...`) names any other value than DILATED_CONV_KERNELS."""
    choice = os.environ.get(DILATED_CONV_ENV, "auto")
    if choice not in DILATED_CONV_KERNELS:
        raise ConfigError(f"{DILATED_CONV_ENV}={choice!r}: expected one of {DILATED_CONV_KERNELS}")
    return choice


def dilated_conv_kernel(dtype: str = "float32") -> str:
    """The kernel DilatedConv2D trains with here for `dtype` inputs: "native", "taps",
    "portable" or "keras".

    native: one `tf.nn.conv2d(dilations=r)`, forward and gradients. It needs a GPU, or oneDNN
        on CPU: TensorFlow's other CPU kernels (Eigen) compute the dilated forward pass but
        refuse its gradients ("Current CPU implementations do not yet support dilation rates
        larger than 1"), and so does oneDNN for bfloat16 on a CPU without bfloat16 instructions.
    taps: the conv as one matmul per kernel tap, each over only the rows and columns where
        that tap reads inside the image (`tap_dilated_conv2d`); forward and kernel gradient
        that way, the input gradient native where TensorFlow has it, else by taps too. At
        ASPP's rates most taps of a 24x24 map read padding, which native kernels compute.
    portable: the native forward pass with the gradients of `portable_dilated_conv2d`.
    keras: Keras's stock path (SpaceToBatchND around an ordinary conv); runs everywhere but
        its gradient is slow at large rates (16 s for ASPP's rate-18 branch at 384 px, batch 4).
    "auto" takes native on a GPU and taps on every CPU: with ASPP's three branches forward and
    backward at 384 px, batch 4, on a Xeon with AMX, taps took 0.15 s against native's 0.43 s
    in bfloat16 and 0.43 s against 0.59 s in float32 with oneDNN, and 0.67 s against
    portable's 0.80 s without oneDNN (docs/performance.md).
    Inference (training=False) runs the native forward pass with every kernel but keras, so
    exported graphs hold one dilated conv rather than taps.
    The environment variable DEEPLAB_DILATED_CONV forces one (benchmarks and tests do).
    """
    forced = dilated_conv_choice()
    if forced != "auto":
        return forced
    if tf.config.list_physical_devices("GPU"):
        return "native"
    return "taps"


def native_dilated_gradients(dtype: str = "float32") -> bool:
    """Whether TensorFlow here has a kernel for dilated-conv gradients of `dtype`: on a GPU, or
    oneDNN on CPU (for bfloat16 only with the CPU's bfloat16 instructions)."""
    if tf.config.list_physical_devices("GPU"):
        return True
    return onednn_enabled() and (dtype == "float32" or runtime.has_bfloat16())


def _pixel_matmul(x, dy):
    """x^T dy summed over every pixel: (B, H, W, C_in), (B, H, W, C_out) -> (C_in, C_out).

    One matmul with the first operand transposed in the kernel; tf.tensordot would first copy
    x into (C_in, B*H*W) order."""
    rows = tf.reshape(x, (-1, x.shape[-1]))  # (B*H*W, C_in), no copy
    return tf.matmul(rows, tf.reshape(dy, (-1, dy.shape[-1])), transpose_a=True)


def _filter_gradient(x, dy, kernel_size, rate):
    """d loss / d kernel of a stride-1 "same" dilated conv: (kh, kw, C_in, C_out).

    Tap (i, j) of output pixel (y, x) reads input pixel (y + i*r - ph, x + j*r - pw), so its
    kernel gradient is one matmul of the input and dy, each cut to the rows and columns where
    that tap reads inside the image (at large rates most taps mostly read padding).
    x: (B, H, W, C_in), dy: (B, H, W, C_out).
    """
    kh, kw = kernel_size
    taps = []  # a tap that reads only padding multiplies empty slices: zeros, in its place
    for _, _, (di, dj), (y0, y1, x0, x1) in _tap_windows(tf.shape(x)[1], tf.shape(x)[2], kernel_size, rate):
        inputs = x[:, y0 + di:y1 + di, x0 + dj:x1 + dj, :]
        grads = dy[:, y0:y1, x0:x1, :]
        taps.append(_pixel_matmul(inputs, grads))  # (C_in, C_out)
    return tf.reshape(tf.stack(taps), (kh, kw, x.shape[-1], dy.shape[-1]))


def _at_least(value, low):
    """max(value, low): a Python int when both are, so that a statically empty window is known."""
    return max(value, low) if isinstance(value, int) else tf.maximum(value, low)


def _at_most(value, high):
    """min(value, high): a Python int when both are."""
    return min(value, high) if isinstance(high, int) else tf.minimum(value, high)


def _tap_windows(h, w, kernel_size, rate):
    """The taps of a stride-1 "same" conv with an odd kernel dilated by `rate`, on an (h, w)
    map (Python ints, or scalar tensors when unknown), as (i, j, (di, dj), (y0, y1, x0, x1)):
    tap (i, j) of output pixel (y, x) reads input pixel (y + di, x + dj), and output rows
    y0:y1 and columns x0:x1 are those where it reads inside the map. y1 >= y0 and x1 >= x0 keep
    the slices' bounds non-negative (a negative one would count from the end) when a tap's
    offset is at least the map's size; then the window is empty (y1 == y0 or x1 == x0), known
    as Python ints when h and w are."""
    kh, kw = kernel_size
    ph, pw = rate[0] * (kh - 1) // 2, rate[1] * (kw - 1) // 2
    for i in range(kh):
        di = i * rate[0] - ph
        for j in range(kw):
            dj = j * rate[1] - pw
            y0, x0 = max(0, -di), max(0, -dj)
            yield i, j, (di, dj), (y0, _at_least(h - max(0, di), y0), x0, _at_least(w - max(0, dj), x0))


def portable_dilated_conv2d(x, kernel, rate):
    """A stride-1 "same" dilated conv with an odd kernel whose gradients need no oneDNN.

    Forward: `tf.nn.conv2d(dilations=rate)`, which every TensorFlow CPU kernel computes. The
    input gradient is the same dilated conv of dy with the kernel flipped and its channels
    swapped (odd kernels pad symmetrically, so "same" lines up); the kernel gradient is
    `_filter_gradient`. x: (B, H, W, C_in), kernel: (kh, kw, C_in, C_out) -> (B, H, W, C_out).
    """
    rate = list(rate)

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])  # (kh, kw, C_out, C_in)
            dx = tf.nn.conv2d(dy, flipped, strides=1, padding="SAME", dilations=rate)
            return dx, _filter_gradient(x, dy, kernel.shape[:2], rate)

        return tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=rate), grad

    return conv(x, kernel)


def _size(x, axis: int):
    """x's size along `axis`: a Python int when the graph knows it, else a scalar tensor."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


TAPS_BELOW_IN_BOUNDS = 0.8  # the taps kernel trains a dilated conv whose in-bounds fraction is below this


def in_bounds_fraction(size, kernel_size, rate) -> float | None:
    """The fraction of a stride-1 "same" conv's taps that read inside an (h, w) map rather than
    padding, or None when the size is unknown. ASPP on 24x24: 0.69, 0.44 and 0.25 at rates
    6, 12 and 18; conv5's rate 2: 0.89."""
    if any(s is None for s in size):
        return None
    fraction = 1.0
    for n, k, r in zip(size, kernel_size, rate):
        offsets = [(i - (k - 1) // 2) * r for i in range(k)]
        fraction *= sum(max(0, n - abs(o)) for o in offsets) / (k * n)
    return fraction


def _taps_conv(x, kernel, rate):
    """Sum over taps of (x cut to where the tap reads inside the image) @ kernel[tap], each
    padded back to the full map. x: (B, H, W, C_in), kernel: (kh, kw, C_in, C_out), odd
    kernel, stride 1, "same" -> (B, H, W, C_out). A tap that reads only padding is skipped when
    the map's size is known, and multiplies an empty slice when it is not."""
    h, w = _size(x, 1), _size(x, 2)
    parts = []
    for i, j, (di, dj), (y0, y1, x0, x1) in _tap_windows(h, w, kernel.shape[:2], rate):
        if isinstance(y1, int) and isinstance(x1, int) and (y1 == y0 or x1 == x0):
            continue  # statically known to read only padding
        part = tf.einsum("bhwc,cf->bhwf", x[:, y0 + di:y1 + di, x0 + dj:x1 + dj, :], kernel[i, j])
        # Pad back to (H, W); an empty part (a tap past the edge, |offset| >= size) starts
        # at the edge so that the padding stays non-negative.
        top, left = _at_most(y0, h), _at_most(x0, w)
        parts.append(tf.pad(part, [[0, 0], [top, h - top - (y1 - y0)], [left, w - left - (x1 - x0)], [0, 0]]))
    if not parts:  # every tap reads padding: the output is zeros
        return tf.zeros(tf.concat([tf.shape(x)[:3], [kernel.shape[-1]]], 0), x.dtype)
    return tf.add_n(parts)


def tap_dilated_conv2d(x, kernel, rate, native_input_gradient: bool):
    """A stride-1 "same" dilated conv with an odd kernel, computed tap by tap in bounds.

    Forward and kernel gradient are one matmul per tap over the rows and columns where the tap
    reads inside the image (`_taps_conv`, `_filter_gradient`). The input gradient is the
    native Conv2DBackpropInput when `native_input_gradient` (oneDNN or a GPU have one; with
    oneDNN and bfloat16 it was 6x faster than the native forward pass of the same shape),
    else `_taps_conv` of dy with the kernel flipped and its channels swapped.
    x: (B, H, W, C_in), kernel: (kh, kw, C_in, C_out) -> (B, H, W, C_out).
    """
    rate = list(rate)

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            if native_input_gradient:
                dx = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=[1, 1, 1, 1],
                    padding="SAME", dilations=[1, *rate, 1])
            else:
                dx = _taps_conv(dy, tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2]), rate)
            return dx, _filter_gradient(x, dy, kernel.shape[:2], rate)

        return _taps_conv(x, kernel, rate), grad

    return conv(x, kernel)


def matmul_gradient_conv1x1(x, kernel):
    """A 1x1 stride-1 conv whose kernel gradient is one matmul, x^T dy over every pixel.

    The forward pass and input gradient stay TensorFlow's. Measured on a Xeon with AMX (oneDNN,
    mixed bfloat16, batch 4, forward and backward): conv5's 2048 -> 512 at 24x24 took 16 ms
    against 29 ms native, conv3's 512 -> 128 at 48x48 6 ms against 9 ms, because oneDNN's
    bfloat16 weight-gradient kernel is slow when there are few pixels and many channels; at
    96x96 with 64 channels native was faster, and in float32 neither won.
    x: (B, H, W, C_in), kernel: (1, 1, C_in, C_out) -> (B, H, W, C_out).
    """
    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                                                strides=[1, 1, 1, 1], padding="VALID")
            dk = _pixel_matmul(x, dy)  # (C_in, C_out)
            return dx, tf.reshape(dk, tf.shape(kernel))

        return tf.nn.conv2d(x, kernel, strides=1, padding="VALID"), grad

    return conv(x, kernel)


MATMUL_GRADIENT_MIN_CHANNELS = 128  # conv2's 64-channel 1x1s at 96x96 train faster natively


def matmul_gradient_applies(layer, training: bool) -> bool:
    """Whether `layer` trains through `matmul_gradient_conv1x1` here: a 1x1 stride-1
    channels-last conv with at least MATMUL_GRADIENT_MIN_CHANNELS in and out, computing in
    bfloat16, in a training step, on a CPU."""
    return (training and layer.compute_dtype == "bfloat16" and layer.data_format == "channels_last"
            and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1)
            and min(layer.kernel.shape[2], layer.filters) >= MATMUL_GRADIENT_MIN_CHANNELS
            and dilated_conv_choice() in ("auto", "taps")
            and not tf.config.list_physical_devices("GPU"))


def add_bias_matvec(y, bias):
    """y + bias, whose bias gradient is one matvec, dy^T 1 over every pixel.

    TensorFlow's own gradient is BiasAddGrad, which oneDNN's graph rewrite fuses into the
    conv's weight gradient (_MklNativeConv2DBackpropFilterWithBias). That fused kernel is the
    slow part of a ResNet conv's backward pass: measured on a Xeon with AMX (float32, batch 4,
    forward and backward of one 1x1 conv), 64 -> 256 at 96x96 took 27.1 ms fused, 24.1 ms with
    this matvec and 22.5 ms with no bias at all; 128 -> 512 at 48x48 21.1 / 18.3 / 17.9 ms.
    y: (B, H, W, C), bias: (C,) of y's dtype -> (B, H, W, C).
    """
    @tf.custom_gradient
    def add(y, bias):
        def grad(dy):
            rows = tf.reshape(dy, (-1, tf.shape(dy)[-1]))  # (B*H*W, C), no copy
            return dy, tf.linalg.matvec(rows, tf.ones(tf.shape(rows)[:1], dy.dtype), transpose_a=True)

        return y + tf.reshape(bias, (1, 1, 1, -1)), grad

    return add(y, bias)


def bias_gradient_by_matvec(training: bool) -> bool:
    """Whether a training step here adds conv biases through `add_bias_matvec`: on a CPU,
    unless DILATED_CONV_ENV asks for TensorFlow's stock kernels ("keras")."""
    return (training and dilated_conv_choice() != "keras"
            and not tf.config.list_physical_devices("GPU"))
