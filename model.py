"""DeepLab v3: ResNet-50 cut after conv4, conv5 rebuilt with atrous convolution, and ASPP.

    from model import build_deeplabv3
    model = build_deeplabv3((384, 384, 3), backbone_weights="imagenet")  # logits (B, 384, 384, 21)

Inputs are RGB images as float32 in [0, 255] (the pipeline's range); the backbone's ImageNet
preprocessing happens inside the model, so pretrained weights see what they were trained on.
Every layer is named, the model returns logits, and there are no `Lambda` layers, so a
`.keras` file loads with `safe_mode=True`.
"""
from __future__ import annotations

import inspect
import os

import keras
import tensorflow as tf
from keras import layers, ops

from kit import kernels, runtime
from kit.errors import ConfigError
from kit.voc import NUM_CLASSES

BN_EPSILON = 1.001e-5  # keras.applications.ResNet50's, so pretrained statistics carry over
# (output stride) -> dilation of the conv4 and conv5 stages, and the ASPP rates.
ATROUS = {16: {"conv4": 1, "conv5": 2, "aspp": (6, 12, 18)},
          8: {"conv4": 2, "conv5": 4, "aspp": (12, 24, 36)}}
RESNET_STAGES = {"conv4": (256, 6), "conv5": (512, 3)}  # bottleneck filters, blocks
BACKBONES = ("resnet50", "mobilenetv2")


@keras.saving.register_keras_serializable(package="deeplab")
class ImagenetPreprocessing(layers.Layer):
    """[0, 255] RGB to what an ImageNet backbone expects.

    mode "caffe" (ResNet-50): RGB -> BGR, minus the ImageNet channel means.
    mode "tf" (MobileNetV2): scaled to [-1, 1].
    """

    BGR_MEAN = (103.939, 116.779, 123.68)

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, images):
        if self.mode == "tf":
            return images / 127.5 - 1.0
        bgr = ops.flip(images, axis=-1)
        return bgr - ops.convert_to_tensor(self.BGR_MEAN, dtype=bgr.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="deeplab")
class FusedBatchNormalization(layers.BatchNormalization):
    """Batch norm through TensorFlow's fused kernel: same weights, config and maths as Keras's.

    Keras 3 normalises with separate ops (moments, then several elementwise passes) and
    upcasts bfloat16 activations to float32 on the way; the fused kernel does one pass in the
    input's dtype. Measured here at 384 px, batch 4 (bench/bench_train.py): training 13%
    faster in float32 and 78% faster with mixed bfloat16. Only for 4-D NHWC inputs. The moving
    variance is updated with the batch's biased variance, as Keras does (TensorFlow's kernel
    returns the unbiased one, n / (n - 1) larger; at n = 1, e.g. ASPP's pooled branch at batch
    1, it returns 0, so the statistics stay finite).
    """

    def call(self, inputs, training=None, mask=None):
        if mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            raise ValueError(f"{self.name}: the fused batch norm takes unmasked NHWC inputs")
        channels = inputs.shape[-1]
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones((channels,))
        beta = tf.convert_to_tensor(self.beta) if self.center else tf.zeros((channels,))
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True)
            shape = tf.shape(inputs)
            n = tf.cast(shape[0] * shape[1] * shape[2], variance.dtype)  # values per channel
            variance = variance * tf.maximum(n - 1.0, 0.0) / n  # unbiased -> biased, as Keras
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon, is_training=False)
        return tf.cast(y, self.compute_dtype)


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


def matmul_gradient_applies(layer: layers.Conv2D, training: bool) -> bool:
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


def _conv_call(layer: layers.Conv2D, outputs, training: bool):
    """Conv2D.call's bias and activation after our own convolution `outputs` (channels last)."""
    if layer.use_bias and bias_gradient_by_matvec(training):
        outputs = add_bias_matvec(outputs, ops.cast(layer.bias, outputs.dtype))
    elif layer.use_bias:
        outputs = ops.add(outputs, ops.reshape(layer.bias, (1, 1, 1, layer.filters)))
    return layer.activation(outputs) if layer.activation is not None else outputs


def winograd_applies(layer: layers.Conv2D, inputs, training: bool) -> bool:
    """Whether a training step computes `layer` by Winograd's F(4x4, 3x3)
    (`kit.kernels.winograd_applies`, which counts its multiplications against those of the
    taps that read inside the map), unless DILATED_CONV_ENV asks for TensorFlow's stock
    kernels ("keras")."""
    if dilated_conv_choice() == "keras":
        return False
    in_bounds = in_bounds_fraction(tuple(inputs.shape[1:3]), layer.kernel_size, layer.dilation_rate)
    return kernels.winograd_applies(layer, inputs, training, in_bounds)


@keras.saving.register_keras_serializable(package="deeplab")
class BiasConv2D(layers.Conv2D):
    """A Conv2D whose training step on a CPU takes the bias gradient by `add_bias_matvec`, the
    kernel gradient by `matmul_gradient_conv1x1` where that applies (see
    `matmul_gradient_applies`), and its 3x3s in float32 by Winograd's F(4x4, 3x3) where that
    does a quarter to a half of the multiplications (`winograd_applies`; conv5's rate-2 3x3s
    and ASPP's rate 6 are DilatedConv2D, which inherits this). Conv2D everywhere else: same
    weights and config.
    keras.applications' convs with a bias are re-classed to it (their 1x1 stride-1 convs to
    its subclass PointwiseConv2D) by build_deeplabv3."""

    def call(self, inputs, training=None):
        # Conv2D.call, with the kernel chosen by `training` (Keras passes it in a training step).
        if self.data_format != "channels_last":
            return layers.Conv2D.call(self, inputs)
        training = bool(training)
        kernel = self.kernel_for(inputs, training)
        if kernel == "matmul_gradient":
            outputs = matmul_gradient_conv1x1(inputs, tf.convert_to_tensor(self.kernel))
        elif kernel == "winograd":
            outputs = kernels.winograd_conv3x3(inputs, tf.convert_to_tensor(self.kernel), self.dilation_rate)
        else:
            outputs = self._convolve(inputs, self.kernel, kernel)
        return _conv_call(self, outputs, training)

    def kernel_for(self, inputs, training: bool) -> str:
        """The kernel `call` computes this conv with, here and now, for `inputs` (a tensor or
        a spec: only its static shape is read): "matmul_gradient", "winograd", or the direct
        conv's kernel, `_direct_kernel`. It is chosen when a step is traced; benchmarks ask it
        which kernel they timed."""
        if matmul_gradient_applies(self, training):
            return "matmul_gradient"
        if winograd_applies(self, inputs, training):
            return "winograd"
        return self._direct_kernel(inputs.shape, training)

    def _direct_kernel(self, shape, training: bool) -> str:
        """"native": TensorFlow's own conv (Conv2D.convolution_op)."""
        return "native"

    def _convolve(self, inputs, kernel, direct: str):
        """The conv by the direct kernel `direct` (`_direct_kernel`'s name)."""
        return self.convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="deeplab")
class PointwiseConv2D(BiasConv2D):
    """The 1x1 stride-1 BiasConv2D: its own class, so that saved models name what they hold."""


@keras.saving.register_keras_serializable(package="deeplab")
class DilatedConv2D(BiasConv2D):
    """A Conv2D whose dilated (atrous) case runs as one native convolution where it can.

    For a dilation rate above 1, Keras calls `tf.nn.convolution`, which on CPU wraps the
    convolution in SpaceToBatchND / BatchToSpaceND: each rate-r conv on an (h, w) map becomes
    an ordinary conv on r*r zero-padded tiles of the map, most of whose taps hit padding.
    `tf.nn.conv2d` with `dilations` reaches oneDNN's (or cuDNN's) dilated kernel directly.
    Measured on ASPP's three branches (24x24x2048 -> 256, batch 4, forward and backward,
    AVX-512 CPU with oneDNN): 0.77 s against 3.46 s in float32, 0.42 s against 2.39 s in
    bfloat16. In training, CPUs go further with `tap_dilated_conv2d`, which skips the taps
    that read padding. The kernel is chosen when the layer is traced (`dilated_conv_kernel`),
    not saved: the weights, config and `.keras` file are Conv2D's, whichever kernel ran.
    """

    def convolution_op(self, inputs, kernel):
        # Conv2D.call's path (channels first, or a caller outside `call`): inference.
        return self._convolve(inputs, kernel, self._direct_kernel(inputs.shape, training=False))

    def _direct_kernel(self, shape, training: bool) -> str:
        """dilated_conv_kernel's choice for this layer and map size: "taps" only in training
        and where few taps read inside the map, "portable", "native" (tf.nn.conv2d with
        dilations) or "keras" (Conv2D's stock SpaceToBatchND path)."""
        if max(self.dilation_rate) == 1:
            return "native"
        if self.data_format != "channels_last":
            return "keras"
        choice = dilated_conv_kernel(self.compute_dtype)
        # Tap-shaped kernels need a stride-1 "same" conv with an odd kernel (ASPP's and conv5's).
        by_taps = (self.padding == "same" and max(self.strides) == 1 and all(k % 2 for k in self.kernel_size))
        if choice == "taps" and training and by_taps:
            fraction = in_bounds_fraction(tuple(shape[1:3]), self.kernel_size, self.dilation_rate)
            if fraction is not None and fraction < TAPS_BELOW_IN_BOUNDS:
                return "taps"
            # Most taps read the image (conv5's rate 2 on 24x24: 0.89) or the size is unknown:
            # the native conv was faster (bfloat16 50 against 64 ms, float32 219 against 232
            # ms for 512 -> 512 at 24x24, batch 4), and portable's gradients without oneDNN.
            return "native" if native_dilated_gradients(self.compute_dtype) else "portable"
        if choice == "portable" and by_taps:
            return "portable"  # in inference too: its forward pass is the native one
        if choice in ("native", "taps"):  # taps infers with the native forward pass
            return "native"
        return "keras"

    def _convolve(self, inputs, kernel, direct: str):
        if direct == "taps":
            return tap_dilated_conv2d(inputs, tf.convert_to_tensor(kernel), self.dilation_rate,
                                      native_input_gradient=native_dilated_gradients(self.compute_dtype))
        if direct == "portable":
            return portable_dilated_conv2d(inputs, tf.convert_to_tensor(kernel), self.dilation_rate)
        if direct == "native" and max(self.dilation_rate) > 1:
            return tf.nn.conv2d(inputs, kernel, strides=list(self.strides), padding=self.padding.upper(),
                                dilations=list(self.dilation_rate))
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="deeplab")
class ResizeLike(layers.Layer):
    """Bilinearly resize `x` (B, h, w, C) to the spatial size of `reference` (B, H, W, ?).

    The size is read at run time, so one model serves any input size.
    """

    def call(self, x, reference):
        return self.resize(x, tf.shape(reference)[1:3])

    @staticmethod
    def resize(x, size):
        """(B, h, w, C) -> (B, H, W, C) for size (H, W): what the layer computes, for callers
        that finish a model's output outside it (coarse_logits_model)."""
        # keras.ops.image.resize insists on a Python-int size (it compares it with 0), which a
        # graph traced for unknown H and W cannot give; TensorFlow's resize takes a tensor.
        return tf.image.resize(x, size, method="bilinear")

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


def coarse_logits_model(model) -> keras.Model | None:
    """`model` without its last layer when that layer is a ResizeLike bringing the logits up to
    the input image's size, as build_deeplabv3's "logits" is: (B, H, W, 3) -> (B, h, w, C)
    float32 logits at the features' resolution (h = H / output stride). Finish them with
    ResizeLike.resize(logits, (H, W)). None for any other model (a SavedModel, a model with
    another last layer or several outputs), which has to be run whole.

    For a video loop (inference.Predictor.frame_scores): the upsampling is a pass over the
    full-size (H, W, C) logits that can then run beside the network instead of after it.
    """
    last = model.layers[-1] if isinstance(model, keras.Model) and model.layers else None
    if not isinstance(last, ResizeLike) or len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    x, reference = last.input
    if reference is not model.inputs[0] or last.output is not model.outputs[0]:
        return None
    # The layer computes in float32 (its dtype policy casts a mixed-precision model's bfloat16
    # input up); the coarse model's output is cast the same way.
    return keras.Model(model.inputs[0], layers.Activation("linear", dtype="float32", name="coarse_logits")(x),
                       name=f"{model.name}_coarse")


@keras.saving.register_keras_serializable(package="deeplab")
class ASPP(layers.Layer):
    """Atrous spatial pyramid pooling (DeepLab v3, Chen et al. 2017, section 3.3).

    Five parallel branches on the backbone features (B, h, w, C_in): a 1x1 conv, three 3x3
    atrous convs at `rates`, and image pooling (global average -> 1x1 conv -> BN -> ReLU ->
    bilinear upsampling of the 1x1 map back to (h, w), which broadcasts it). Each
    branch has `filters` channels with batch norm and ReLU; their concatenation (B, h, w,
    5 * filters) is projected by a 1x1 conv to `filters`, with BN, ReLU and dropout.
    """

    def __init__(self, rates=(6, 12, 18), filters: int = 256, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.rates, self.filters, self.dropout = tuple(rates), filters, dropout

        def conv_bn(tag, kernel=1, rate=1):
            conv = DilatedConv2D(filters, kernel, padding="same", dilation_rate=rate, use_bias=False,
                                 name=f"{tag}_conv")
            return conv, FusedBatchNormalization(name=f"{tag}_bn"), layers.ReLU(name=f"{tag}_relu")

        self.branches = [conv_bn("b0_1x1")] + [conv_bn(f"b{i + 1}_rate{r}", 3, r) for i, r in enumerate(rates)]
        self.pool = layers.GlobalAveragePooling2D(keepdims=True, name="pool")
        self.pool_branch = conv_bn("pool")  # the chapter's bug skipped this conv
        self.broadcast = ResizeLike(name="pool_broadcast")
        self.concat = layers.Concatenate(name="concat")
        self.project = conv_bn("project")
        self.drop = layers.Dropout(dropout, name="dropout")

    def build(self, input_shape):
        # Build every sublayer now, so weights exist (and load) before the first call.
        shape = tuple(input_shape)
        for conv, bn, _ in self.branches:
            conv.build(shape)
            bn.build(shape[:-1] + (self.filters,))
        pooled = (shape[0], 1, 1, shape[-1])
        self.pool_branch[0].build(pooled)
        self.pool_branch[1].build(pooled[:-1] + (self.filters,))
        self.project[0].build(shape[:-1] + (self.filters * (len(self.branches) + 1),))
        self.project[1].build(shape[:-1] + (self.filters,))

    @staticmethod
    def _apply(block, x, training):
        conv, bn, relu = block
        return relu(bn(conv(x), training=training))

    def call(self, features, training=None):
        outs = [self._apply(b, features, training) for b in self.branches]
        pooled = self._apply(self.pool_branch, self.pool(features), training)  # (B, 1, 1, filters)
        # Broadcast to (B, h, w, filters) by resizing the 1x1 map (the same values): an add of
        # zeros gave full-int8 TFLite a zero constant whose scale XNNPACK's int8 ADD refuses,
        # so that op fell back to TFLite's builtin kernels.
        outs.append(ops.cast(self.broadcast(pooled, outs[0]), outs[0].dtype))  # resize gives float32
        x = self._apply(self.project, self.concat(outs), training)
        return self.drop(x, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "rates": list(self.rates), "filters": self.filters,
                "dropout": self.dropout}


def bottleneck(x, filters: int, name: str, dilation: int = 1, projection: bool = False):
    """A ResNet-50 v1 bottleneck at stride 1, its 3x3 conv dilated by `dilation`.

    Layer names match keras.applications.ResNet50, so pretrained weights map one to one. The
    shortcut is the block's input, which is the previous block's output after its ReLU.
    (B, h, w, C) -> (B, h, w, 4 * filters).
    """
    shortcut = x
    if projection:
        shortcut = layers.Conv2D(4 * filters, 1, name=f"{name}_0_conv")(x)
        shortcut = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    y = layers.Conv2D(filters, 1, name=f"{name}_1_conv")(x)
    y = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = DilatedConv2D(filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_2_conv")(y)
    y = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"{name}_2_bn")(y)
    y = layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    y = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"{name}_3_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _pretrained(factory, weights, x, name: str):
    """Instantiate a keras.applications backbone on tensor `x`, with a clear error offline."""
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise FileNotFoundError(f"backbone weights file {weights!r} does not exist")
    try:
        return factory(include_top=False, weights=weights, input_tensor=x)
    except Exception as err:  # the download raises several types; all mean the same to a user
        if weights != "imagenet":
            raise
        raise RuntimeError(
            f"could not fetch ImageNet weights for {name} ({type(err).__name__}: {err}). Without internet, "
            f"copy Keras's {name} 'notop' weights file here and pass its path (train.py "
            f"--backbone-weights PATH), or pass --backbone-weights none to train from scratch.") from err


def _resnet50_features(x, weights, output_stride: int, multi_grid):
    """ResNet-50 features at `output_stride`: (B, H/os, W/os, 2048)."""
    resnet = _pretrained(keras.applications.ResNet50, weights, x, "ResNet-50")
    rates = ATROUS[output_stride]
    # Output stride 16 keeps keras's conv4 (stride 16); 8 rebuilds conv4 too, dilated.
    rebuilt = ["conv5"] if output_stride == 16 else ["conv4", "conv5"]
    cut = "conv4_block6_out" if output_stride == 16 else "conv3_block4_out"
    y = resnet.get_layer(cut).output  # (B, H/16, W/16, 1024) or (B, H/8, W/8, 512)
    grid = {"conv4": (1,) * RESNET_STAGES["conv4"][1], "conv5": tuple(multi_grid or (1, 1, 1))}
    for stage in rebuilt:
        filters, blocks = RESNET_STAGES[stage]
        for b in range(blocks):
            y = bottleneck(y, filters, f"{stage}_block{b + 1}", dilation=rates[stage] * grid[stage][b],
                           projection=b == 0)
    return y, resnet


def _mobilenetv2_features(x, weights, output_stride: int):
    """MobileNetV2 features, truncated where the stride reaches `output_stride`.

    Output stride 16 takes `block_13_expand_relu` (B, H/16, W/16, 576); 8 takes
    `block_6_expand_relu` (B, H/8, W/8, 192). Lighter than ResNet-50 for on-board use.
    """
    net = _pretrained(keras.applications.MobileNetV2, weights, x, "MobileNetV2")
    cut = "block_13_expand_relu" if output_stride == 16 else "block_6_expand_relu"
    return net.get_layer(cut).output, net


def copy_backbone_weights(model: keras.Model, source: keras.Model) -> list[str]:
    """Copy weights from `source` into every layer of `model` with the same name; return the names.

    Used for the rebuilt (dilated) stages: a dilation leaves a kernel's shape unchanged.
    """
    copied = []
    source_layers = {layer.name: layer for layer in source.layers}
    for layer in model.layers:
        twin = source_layers.get(layer.name)
        if twin is not None and twin is not layer and twin.weights:
            layer.set_weights(twin.get_weights())
            copied.append(layer.name)
    return copied


def _reclass(layer: layers.Layer, cls: type) -> None:
    """Make a built layer an instance of `cls`, a stateless subclass of its class whose call
    takes `training`. Keras records at construction whether call takes `training` (and passes
    it only then), so that record is refreshed; tests/test_model.py checks that a training
    step reaches the subclass's path."""
    layer.__class__ = cls
    layer._call_signature = inspect.signature(layer.call)
    layer.call_signature_parameters = list(layer._call_signature.parameters)
    layer._call_has_training_arg = "training" in layer.call_signature_parameters
    layer._call_has_context_arg = {arg: arg in layer.call_signature_parameters for arg in layer._call_context_args}


def _all_layers(model: keras.Model):
    """Every layer of the model, including those nested inside ASPP."""
    for layer in model.layers:
        yield layer
        yield from (sub for sub in layer._flatten_layers(include_self=False))


def build_deeplabv3(input_shape=(384, 384, 3), num_classes: int = NUM_CLASSES, backbone_weights="imagenet",
                    output_stride: int = 16, backbone: str = "resnet50", multi_grid=None,
                    aspp_filters: int = 256, dropout: float = 0.1, bn_momentum: float | None = None) -> keras.Model:
    """DeepLab v3 mapping (B, H, W, 3) RGB in [0, 255] to logits (B, H, W, num_classes).

    Args:
        input_shape: (H, W, 3); H and W may be None for a model that takes any size.
        backbone_weights: "imagenet" (Keras's download), a path to a Keras weights file for
            the backbone (`include_top=False`), or None.
        output_stride: 16 (conv5 at rate 2, ASPP 6/12/18) or 8 (conv4 at 2, conv5 at 4, ASPP 12/24/36).
        backbone: "resnet50" or "mobilenetv2" (lighter, for on-board inference).
        multi_grid: conv5's per-block rate multipliers, e.g. (1, 2, 4); None means (1, 1, 1).
        bn_momentum: if given, the moving-average momentum of every batch norm. Keras's
            MobileNetV2 uses 0.999, which leaves the inference statistics near their
            initial values for the first thousands of steps: set 0.9 for short runs from scratch.
    """
    if output_stride not in ATROUS:
        raise ValueError(f"output_stride must be 16 or 8, got {output_stride}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if isinstance(backbone_weights, str) and backbone_weights.lower() == "none":
        backbone_weights = None
    images = keras.Input(shape=input_shape, name="image")  # (B, H, W, 3), [0, 255]
    if backbone == "resnet50":
        x = ImagenetPreprocessing("caffe", name="imagenet_preprocessing")(images)
        features, source = _resnet50_features(x, backbone_weights, output_stride, multi_grid)
    else:
        x = ImagenetPreprocessing("tf", name="imagenet_preprocessing")(images)
        features, source = _mobilenetv2_features(x, backbone_weights, output_stride)
    # (B, H/os, W/os, C) -> (B, H/os, W/os, 256)
    head = ASPP(ATROUS[output_stride]["aspp"], aspp_filters, dropout, name="aspp")(features)
    logits = layers.Conv2D(num_classes, 1, name="classifier")(head)  # (B, H/os, W/os, classes)
    # float32 logits even under a mixed-precision policy, so the loss sees full precision.
    logits = ResizeLike(name="logits", dtype="float32")(logits, images)  # (B, H, W, classes)
    model = keras.Model(images, logits, name=f"deeplabv3_{backbone}_os{output_stride}")
    for layer in _all_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            if type(layer) is layers.BatchNormalization:
                # keras.applications builds plain Keras batch norms: give them the fused
                # kernel. The subclass adds no state, so the instance is otherwise unchanged.
                layer.__class__ = FusedBatchNormalization
            if bn_momentum is not None:
                layer.momentum = bn_momentum
        elif type(layer) is layers.Conv2D and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1):
            # keras.applications' and the bottlenecks' 1x1 convs: the same swap, for the
            # faster bfloat16 kernel gradient (PointwiseConv2D adds no state either).
            _reclass(layer, PointwiseConv2D)
        elif type(layer) is layers.Conv2D and layer.use_bias:
            _reclass(layer, BiasConv2D)  # ResNet's 7x7, 3x3 and strided convs: the bias gradient
    if backbone == "resnet50" and backbone_weights is not None:
        copy_backbone_weights(model, source)
    return model


AUX_FEATURES = "conv4_block6_out"  # ResNet-50's conv4 output, where the auxiliary head reads


def training_model(model: keras.Model, aux_filters: int = 256, dropout: float = 0.1) -> keras.Model:
    """`model` with an auxiliary FCN head on conv4, for training with an auxiliary loss.

    The head (3x3 conv, batch norm, ReLU, dropout, 1x1 conv to the classes, upsampled to the
    input) is PSPNet's and torchvision's. Output (B, H, W, 2C): the main logits, then the
    auxiliary ones (losses.py splits them). `model` shares every layer and stays the
    single-output model that best.keras and the exports hold.
    """
    if AUX_FEATURES not in {layer.name for layer in model.layers}:
        raise ValueError(f"the auxiliary head reads ResNet-50's {AUX_FEATURES}; {model.name} has none "
                         f"(use --backbone resnet50 with --aux-loss)")
    num_classes = model.output.shape[-1]
    x = model.get_layer(AUX_FEATURES).output  # (B, H/16, W/16, 1024), or H/8 at output stride 8
    x = layers.Conv2D(aux_filters, 3, padding="same", use_bias=False, name="aux_conv")(x)
    x = FusedBatchNormalization(name="aux_bn")(x)
    x = layers.ReLU(name="aux_relu")(x)
    x = layers.Dropout(dropout, name="aux_dropout")(x)
    x = PointwiseConv2D(num_classes, 1, name="aux_classifier")(x)
    aux = ResizeLike(name="aux_logits", dtype="float32")(x, model.input)  # (B, H, W, C)
    both = layers.Concatenate(name="logits_and_aux", dtype="float32")([model.output, aux])  # (B, H, W, 2C)
    return keras.Model(model.input, both, name=f"{model.name}_with_aux")


def inference_model(model: keras.Model) -> keras.Model:
    """The single-output model inside a training_model (or `model` itself if it has no aux head)."""
    if model.layers[-1].name != "logits_and_aux":
        return model
    return keras.Model(model.input, model.get_layer("logits").output, name=model.name.removesuffix("_with_aux"))


def with_output_stride(model: keras.Model, output_stride: int) -> keras.Model:
    """The same trained ResNet-50 DeepLab v3 rebuilt at another output stride, same weights.

    Dilation leaves every kernel's shape unchanged, so a model trained at output stride 16 runs
    at 8 (conv4 dilated by 2, conv5 by 4, ASPP rates doubled) with its own weights: the paper's
    evaluation protocol (+1-2 mIoU for 4x the conv4/conv5 compute).
    """
    name = model.name  # deeplabv3_<backbone>_os<stride>
    if not name.startswith("deeplabv3_resnet50_os"):
        raise ValueError(f"{name}: only the ResNet-50 model can change its output stride (MobileNetV2's "
                         f"features at stride 8 are another layer, with other weights)")
    if name.endswith(f"_os{output_stride}"):
        return model
    aspp = model.get_layer("aspp")
    conv5_rates = [model.get_layer(f"conv5_block{b}_2_conv").dilation_rate[0] for b in (1, 2, 3)]
    base = ATROUS[int(name.rsplit("_os", 1)[1])]["conv5"]
    grid = tuple(r // base for r in conv5_rates)
    rebuilt = build_deeplabv3((None, None, 3), model.output.shape[-1], backbone_weights=None,
                              output_stride=output_stride, multi_grid=grid if grid != (1, 1, 1) else None,
                              aspp_filters=aspp.filters, dropout=aspp.dropout)
    copied = copy_backbone_weights(rebuilt, model)
    missing = [layer.name for layer in rebuilt.layers if layer.weights and layer.name not in copied]
    if missing:
        raise ValueError(f"{name}: no weights for {missing[:5]} at output stride {output_stride}")
    return rebuilt
