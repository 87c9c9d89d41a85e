"""Forward FLOPs of a fixed-size Keras model, counted layer by layer (a multiply-add is 2 FLOPs)."""
from __future__ import annotations

import math

import keras

COUNTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass for one image, for a model built with a fixed input size.

    Counts convolutions (regular and depthwise) and dense layers, which dominate; batch norm,
    activations, additions and resizing add a few percent and are left out, so the
    utilisation figures derived from this are slight underestimates.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, COUNTED):
            total += _layer_flops(layer, tuple(layer.output.shape))
        for sub in layer._flatten_layers(include_self=False):
            if isinstance(sub, COUNTED):
                # Layers nested in ASPP have no graph node; they work at ASPP's input size,
                # except the image-pooling branch, which works on a 1x1 map.
                h, w = (1, 1) if sub.name.startswith("pool") else tuple(layer.input.shape[1:3])
                total += _layer_flops(sub, (None, h, w, sub.kernel.shape[-1]))
    return int(total)


def _layer_flops(layer, out_shape) -> int:
    kernel = tuple(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        return 2 * math.prod(kernel)
    pixels = out_shape[1] * out_shape[2]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return 2 * pixels * kernel[0] * kernel[1] * kernel[2] * kernel[3]
    return 2 * pixels * math.prod(kernel)
