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

from kit import kernels
from kit.datasets import IMAGENET_MEAN_RGB
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

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, images):
        if self.mode == "tf":
            return images / 127.5 - 1.0
        bgr = ops.flip(images, axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_MEAN_RGB[::-1], dtype=bgr.dtype)

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


def _conv_call(layer: layers.Conv2D, outputs, training: bool):
    """Conv2D.call's bias and activation after our own convolution `outputs` (channels last)."""
    if layer.use_bias and kernels.bias_gradient_by_matvec(training):
        outputs = kernels.add_bias_matvec(outputs, ops.cast(layer.bias, outputs.dtype))
    elif layer.use_bias:
        outputs = ops.add(outputs, ops.reshape(layer.bias, (1, 1, 1, layer.filters)))
    return layer.activation(outputs) if layer.activation is not None else outputs


@keras.saving.register_keras_serializable(package="deeplab")
class BiasConv2D(layers.Conv2D):
    """A Conv2D whose training step on a CPU takes the bias gradient by `kernels.add_bias_matvec`,
    the kernel gradient by `kernels.matmul_gradient_conv1x1` where that applies (see
    `kernels.matmul_gradient_applies`), and its 3x3s in float32 by Winograd's F(4x4, 3x3) where
    that does a quarter to a half of the multiplications (`kernels.winograd_applies`; conv5's rate-2 3x3s
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
            outputs = kernels.matmul_gradient_conv1x1(inputs, tf.convert_to_tensor(self.kernel))
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
        if kernels.matmul_gradient_applies(self, training):
            return "matmul_gradient"
        if kernels.winograd_applies(self, inputs, training):
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
    bfloat16. In training, CPUs go further with `kernels.tap_dilated_conv2d`, which skips the taps
    that read padding. The kernel is chosen when the layer is traced (`kernels.dilated_conv_kernel`),
    not saved: the weights, config and `.keras` file are Conv2D's, whichever kernel ran.
    """

    def convolution_op(self, inputs, kernel):
        # Conv2D.call's path (channels first, or a caller outside `call`): inference.
        return self._convolve(inputs, kernel, self._direct_kernel(inputs.shape, training=False))

    def _direct_kernel(self, shape, training: bool) -> str:
        """kernels.dilated_conv_kernel's choice for this layer and map size: "taps" only in training
        and where few taps read inside the map, "portable", "native" (tf.nn.conv2d with
        dilations) or "keras" (Conv2D's stock SpaceToBatchND path)."""
        if max(self.dilation_rate) == 1:
            return "native"
        if self.data_format != "channels_last":
            return "keras"
        choice = kernels.dilated_conv_kernel(self.compute_dtype)
        # Tap-shaped kernels need a stride-1 "same" conv with an odd kernel (ASPP's and conv5's).
        by_taps = (self.padding == "same" and max(self.strides) == 1 and all(k % 2 for k in self.kernel_size))
        if choice == "taps" and training and by_taps:
            fraction = kernels.in_bounds_fraction(tuple(shape[1:3]), self.kernel_size, self.dilation_rate)
            if fraction is not None and fraction < kernels.TAPS_BELOW_IN_BOUNDS:
                return "taps"
            # Most taps read the image (conv5's rate 2 on 24x24: 0.89) or the size is unknown:
            # the native conv was faster (bfloat16 50 against 64 ms, float32 219 against 232
            # ms for 512 -> 512 at 24x24, batch 4), and portable's gradients without oneDNN.
            return "native" if kernels.native_dilated_gradients(self.compute_dtype) else "portable"
        if choice == "portable" and by_taps:
            return "portable"  # in inference too: its forward pass is the native one
        if choice in ("native", "taps"):  # taps infers with the native forward pass
            return "native"
        return "keras"

    def _convolve(self, inputs, kernel, direct: str):
        if direct == "taps":
            native_gradients = kernels.native_dilated_gradients(self.compute_dtype)
            return kernels.tap_dilated_conv2d(inputs, tf.convert_to_tensor(kernel), self.dilation_rate,
                                              native_input_gradient=native_gradients)
        if direct == "portable":
            return kernels.portable_dilated_conv2d(inputs, tf.convert_to_tensor(kernel), self.dilation_rate)
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
