"""Inference: load a trained model (.keras, .tflite or SavedModel) and turn images into class masks.

Shared by evaluate.py and predict.py, so both score exactly the same predictions. Images are
float32 RGB in pipeline.IMAGE_RANGE, run at their own resolution; optional test-time
augmentation averages softmax probabilities over horizontal flips and scales.
"""
from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

# Importing these registers the custom layers, losses and metrics for loading.
import losses  # noqa: F401
import metrics  # noqa: F401
import model as _model  # noqa: F401


class TFLiteModel:
    """A TFLite segmentation model behind the same call as a Keras model: images -> logits.

    TFLite models from export.py take one (1, H, W, 3) image of a fixed size; larger batches
    are run one image at a time.
    """

    traceable = False  # the interpreter runs eagerly, outside tf.function

    def __init__(self, path: str | Path, num_threads: int | None = None):
        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])  # (1, H, W, 3)

    def __call__(self, images, training=False):
        outputs = []
        for image in np.asarray(images, dtype=np.float32):
            self.interpreter.set_tensor(self._input["index"], image[None])
            self.interpreter.invoke()
            outputs.append(self.interpreter.get_tensor(self._output["index"])[0])
        return np.stack(outputs)  # (B, H, W, C) logits


class SavedModel:
    """A SavedModel from export.py behind the same call: images (any size) -> logits."""

    traceable = True

    def __init__(self, path: str | Path):
        self._loaded = tf.saved_model.load(str(path))
        self.input_shape = (None, None, None, 3)

    def __call__(self, images, training=False):
        return self._loaded.serve(images)


def load_model(path: str | Path):
    """A `.keras` model (loaded with safe_mode), a `.tflite` file or a SavedModel folder."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SavedModel(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}; train one first (python train.py) or pass --model")
    if path.suffix == ".tflite":
        return TFLiteModel(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: expected a .keras or .tflite file, or a SavedModel folder")
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

    def __init__(self, model, flip: bool = False, scales=(1.0,)):
        self.model, self.flip, self.scales = model, flip, tuple(float(s) for s in scales)
        fixed = model.input_shape[1:3]
        self.fixed_size = tuple(fixed) if None not in fixed else None
        self._probabilities = self._probabilities_graph
        if getattr(model, "traceable", True):
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
