"""Forward FLOPs of a fixed-size Keras model, counted layer by layer (a multiply-add is 2 FLOPs)."""
from __future__ import annotations

import math

import keras

COUNTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def forward_flops(model: keras.Model, in_bounds: bool = False) -> int:
    """FLOPs of one forward pass for one image, for a model built with a fixed input size.

    Counts convolutions (regular and depthwise) and dense layers, which dominate; batch norm,
    activations, additions and resizing add a few percent and are left out, so the
    utilisation figures derived from this are slight underestimates.

    By default every kernel tap of every output pixel counts (the usual convention). With
    `in_bounds`, taps of a stride-1 "same" convolution that fall on the zero padding are left
    out: for ASPP's rate-12 and rate-18 branches on a 24x24 map that is most of them, and a
    dilated kernel need not compute them.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, COUNTED):
            total += _layer_flops(layer, tuple(layer.output.shape), in_bounds)
        for sub in layer._flatten_layers(include_self=False):
            if isinstance(sub, COUNTED):
                # Layers nested in ASPP have no graph node; they work at ASPP's input size,
                # except the image-pooling branch, which works on a 1x1 map.
                h, w = (1, 1) if sub.name.startswith("pool") else tuple(layer.input.shape[1:3])
                total += _layer_flops(sub, (None, h, w, sub.kernel.shape[-1]), in_bounds)
    return int(total)


def _taps_inside(length: int, kernel: int, dilation: int) -> int:
    """(output position, tap) pairs along one axis of a stride-1 "same" conv that read real input."""
    offsets = [(t - (kernel - 1) // 2) * dilation for t in range(kernel)]
    return sum(max(0, length - abs(o)) for o in offsets)


def _layer_flops(layer, out_shape, in_bounds: bool = False) -> int:
    kernel = tuple(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        return 2 * math.prod(kernel)
    h, w = out_shape[1], out_shape[2]
    if in_bounds and layer.padding == "same" and tuple(layer.strides) == (1, 1):
        pairs = (_taps_inside(h, kernel[0], layer.dilation_rate[0])
                 * _taps_inside(w, kernel[1], layer.dilation_rate[1]))
    else:
        pairs = h * w * kernel[0] * kernel[1]
    # Conv2D kernels are (kh, kw, C_in, C_out), depthwise ones (kh, kw, C_in, multiplier).
    return 2 * pairs * kernel[2] * kernel[3]
