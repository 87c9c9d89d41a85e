"""Inference: load a trained model and turn images of any size into class masks.

Shared by evaluate.py and predict.py, so both score exactly the same predictions. Images are
float32 RGB in pipeline.IMAGE_RANGE, run at their own resolution; optional test-time
augmentation averages softmax probabilities over horizontal flips and scales.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

# Importing these registers the custom layers, losses and metrics for loading.
import losses  # noqa: F401
import metrics  # noqa: F401
import model as _model  # noqa: F401


def load_model(path: str | Path) -> keras.Model:
    """A `.keras` model saved by train.py, loaded with safe_mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}; train one first (python train.py) or pass --model")
    if path.suffix != ".keras":
        raise ValueError(f"{path}: expected a .keras file")
    return keras.models.load_model(path, compile=False, safe_mode=True)


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 255] from any image file PIL reads (grayscale included)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


class Predictor:
    """Softmax probabilities and masks from a Keras model, at each input's own size.

    Args:
        flip: also predict the mirrored image and average.
        scales: input scale factors to average over (1.0 alone: no multi-scale).
    """

    def __init__(self, model: keras.Model, flip: bool = False, scales=(1.0,)):
        self.model, self.flip, self.scales = model, flip, tuple(float(s) for s in scales)
        fixed = model.input_shape[1:3]
        self.fixed_size = tuple(fixed) if None not in fixed else None
        # One trace for every image size: the signature leaves H and W unknown.
        self._probabilities = tf.function(self._probabilities_graph, reduce_retracing=True,
                                          input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])

    def _forward(self, x):
        """Softmax of the model at x's size (resizing to a fixed-size model's input and back)."""
        size = tf.shape(x)[1:3]
        if self.fixed_size is not None:
            x = tf.image.resize(x, self.fixed_size)
        probs = tf.nn.softmax(tf.cast(self.model(x, training=False), tf.float32), axis=-1)
        return tf.image.resize(probs, size) if self.fixed_size is not None else probs

    def _probabilities_graph(self, images):
        size = tf.shape(images)[1:3]
        total = 0.0
        for scale in self.scales:
            x = images
            if scale != 1.0:
                scaled = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
                x = tf.image.resize(images, tf.maximum(scaled, 1))
            views = [(x, False)] + ([(tf.reverse(x, [2]), True)] if self.flip else [])
            for view, mirrored in views:
                p = self._forward(view)
                p = tf.reverse(p, [2]) if mirrored else p
                total += tf.image.resize(p, size) if scale != 1.0 else p
        return total / (len(self.scales) * (2 if self.flip else 1))

    def probabilities(self, images) -> tf.Tensor:
        """(B, H, W, 3) float32 images -> (B, H, W, C) float32 class probabilities."""
        return self._probabilities(tf.convert_to_tensor(images, tf.float32))

    def masks(self, images) -> np.ndarray:
        """(B, H, W, 3) float32 images -> (B, H, W) uint8 class indices."""
        return tf.argmax(self.probabilities(images), axis=-1, output_type=tf.int32).numpy().astype(np.uint8)
