"""Inference: load a trained model (.keras, SavedModel, .tflite or .onnx) and turn images into class masks.

Shared by evaluate.py, export.py and predict.py (for .keras and SavedModel), so they score
exactly the same predictions. Images are float32 RGB in pipeline.IMAGE_RANGE, run at their own
resolution; optional test-time augmentation averages softmax probabilities over horizontal
flips and scales.

What needs no TensorFlow lives in kit/onboard.py, which the vehicle runs without it: the
.tflite and .onnx runtimes, class tables, image reading and the Predictor's structure. The
Predictor here is that one with TensorFlow kernels, traced into one graph for Keras and
SavedModel models.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

# Importing these registers the custom layers, losses and metrics for loading.
import losses  # noqa: F401
import metrics  # noqa: F401
import model as _model  # noqa: F401
from kit import kernels
from kit import navigation
from kit import onboard
# Re-exported: the names evaluate.py, export.py and the tests have always used from here.
from kit.onboard import (CLASSES_FILE, MIN_SIDE, ImageSizeError, ModelFileError, check_classes,  # noqa: F401
                         classes_for_model, num_classes_of, read_image, window_starts)


class SavedModel:
    """A SavedModel from export.py behind the same call: images (any size) -> logits."""

    traceable = True

    def __init__(self, path: str | Path):
        self._loaded = tf.saved_model.load(str(path))
        self.input_shape = (None, None, None, 3)
        spec = self._loaded.serve.concrete_functions[0].structured_outputs  # (B, H, W, C) logits
        self.output_shape = tuple(spec.shape)

    def __call__(self, images, training=False):
        return self._loaded.serve(images)


def load_model(path: str | Path):
    """A `.keras` model (loaded with safe_mode), a SavedModel folder, or a `.tflite` / `.onnx`
    file (kit/onboard.py: LiteRT, ONNX Runtime).

    Raises ModelFileError naming the path when there is no model there or it cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelFileError(f"{path} is a folder without saved_model.pb: not a SavedModel from export.py")
        loader = SavedModel
    elif not path.is_file():
        raise ModelFileError(f"no model at {path}; train one first (python train.py) or pass --model")
    elif onboard.runs_without_tensorflow(path):
        return onboard.load_model(path)
    elif path.suffix == ".keras":
        loader = lambda p: keras.models.load_model(p, compile=False, safe_mode=True)  # noqa: E731
    else:
        raise ModelFileError(f"{path}: expected a .keras, .tflite or .onnx file, or a SavedModel folder")
    kernels.check_settings()  # before the model runs in a traced step (evaluate.py, predict.py, export.py)
    try:
        return loader(path)
    except Exception as err:  # a truncated, foreign or corrupt file: Keras raises many types
        raise ModelFileError(f"{path} cannot be loaded as a model ({type(err).__name__}: {str(err)[:300]}); "
                             f"is it complete, and written by train.py or export.py?") from err


def cost_map_graph(probs: tf.Tensor, profile: navigation.Profile, class_costs: tf.Tensor) -> tf.Tensor:
    """navigation.cost_map in TensorFlow, step for step: (B, H, W, C) probabilities and (C,)
    class costs -> (B, H, W) float32 cost in [0, 1], inflated by the profile's clearance at W.

    For a video frame's compiled graph (Predictor.finish_frame): there it fuses with the
    softmax and the running average, where NumPy's would copy the (H, W, C) map out of the
    graph and pass over it several times. The probabilities are a softmax here, so cost_map's
    check that they are not logits has nothing to catch. The square max filter is two 1-D
    window maxima (rows, then columns; `window_max`), cut at the border as max_filter's is.
    """
    expected = tf.maximum(tf.tensordot(probs, class_costs, 1), 0.0)  # (B, H, W): sum_c p_c * cost_c
    cost = profile.cost_scale * expected
    if profile.uncertainty_weight > 0.0:
        cost = cost + profile.uncertainty_weight * tf.clip_by_value(1.0 - tf.reduce_max(probs, axis=-1), 0.0, 1.0)
    cost = tf.clip_by_value(cost, 0.0, 1.0)
    window = 2 * profile.radius(int(probs.shape[2])) + 1
    return window_max(window_max(cost, 2, window), 1, window)


def window_max(x: tf.Tensor, axis: int, window: int) -> tf.Tensor:
    """The maximum over a centred window of odd width `window` along `axis`, cut at the
    border (the padding never wins): x's shape -> x's shape.

    By doubling: maxima over windows of 1, 2, 4, ... k <= window elements, each the maximum of
    two shifted copies of the last, then the window as two overlapping k-windows: about
    log2(window) + 1 elementwise maxima instead of `window` compares per element. Measured at
    256x256 (window 27, both axes, one core of an AVX2 EPYC, compiled by XLA): 0.7 ms against
    3.4 ms for two max_pool2d. Exact: a maximum does not round.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    rank = len(x.shape)

    def cut(start, stop):  # x[..., start:stop, ...] along `axis`
        index = [slice(None)] * rank
        index[axis] = slice(start, stop)
        return tuple(index)

    pad = [[0, 0]] * rank
    pad[axis] = [window // 2, window // 2]
    m = tf.pad(x, pad, constant_values=float("-inf"))  # length n + window - 1 along axis
    k = 1
    while 2 * k <= window:  # m[i] = max of the padded x[i:i + 2k]
        m = tf.maximum(m[cut(None, -k)], m[cut(k, None)])
        k *= 2
    # Now m has n + window - k elements; x's i-th window is m[i] and m[i + window - k].
    shift = window - k
    return m if shift == 0 else tf.maximum(m[cut(None, -shift)], m[cut(shift, None)])


def _class_indices(scores: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) scores -> (B, H, W) uint8 argmax over C (class tables have at most 255 classes)."""
    return tf.cast(tf.argmax(scores, axis=-1, output_type=tf.int32), tf.uint8)


class FrameScores(NamedTuple):
    """A video frame's scores from Predictor.frame_scores, for Predictor.finish_frame."""

    scores: tf.Tensor  # (B, h, w, C) float32
    logits: bool  # logits (the softmax is still to take), or probabilities
    size: tuple[int, int] | None = None  # (H, W): the scores are coarse logits still to upsample; None: full size


class Predictor(onboard.Predictor):
    """onboard.Predictor with TensorFlow kernels: probabilities and masks are tf.Tensors, and for
    a traceable model (Keras, SavedModel) each is one graph for every image size.

    cut_frames: let video frames leave the model's last upsampling to the finishing step
    (frame_scores) where the model allows it; False runs the whole model on the model's thread
    (bench/bench_video.py measures both).
    """

    def __init__(self, model, flip: bool = False, scales=(1.0,), mode: str = "whole", crop_size: int = 513,
                 stride: int = 341, max_pixels: int = 2048 * 2048, cut_frames: bool = True):
        super().__init__(model, flip, scales, mode, crop_size, stride, max_pixels)
        self._probabilities_of, self._masks_of, self._smoothed_of = (self._probabilities_graph, self._masks_graph,
                                                                     self._smoothed_graph)
        self._logits_of = lambda x: tf.cast(self.model(x, training=False), tf.float32)
        self._finish_of = {}  # (logits?, Profile or None) -> finish_frame's compiled graph
        if getattr(model, "traceable", True):
            # One trace for every image size: the signatures leave H and W unknown.
            images = tf.TensorSpec((None, None, None, 3), tf.float32)
            self._probabilities_of = tf.function(self._probabilities_graph, reduce_retracing=True,
                                                 input_signature=[images])
            self._masks_of = tf.function(self._masks_graph, reduce_retracing=True, input_signature=[images])
            self._smoothed_of = tf.function(self._smoothed_graph, reduce_retracing=True, input_signature=[
                images, tf.TensorSpec((None, None, None, None), tf.float32), tf.TensorSpec((), tf.float32)])
            self._logits_of = tf.function(self._logits_of, reduce_retracing=True, input_signature=[images])
        self._cut_frames = cut_frames
        self._argmax_of = None  # frame_masks' compiled argmax, made on its first call

    def _forward(self, x):
        """Softmax of the model at x's size (resizing to a fixed-size model's input and back)."""
        size = tf.shape(x)[1:3]
        if self.fixed_size is not None:
            x = tf.image.resize(x, self.fixed_size)
        probs = tf.nn.softmax(tf.cast(self.model(x, training=False), tf.float32), axis=-1)
        return tf.image.resize(probs, size) if self.fixed_size is not None else probs

    def _masks_graph(self, images):
        """(B, H, W) uint8 argmax, inside the graph: on a CPU the argmax there costs about what
        copying the (B, H, W, C) floats out would, and one view skips the softmax (about an
        eighth of a demo-size model's time per image; bench/bench_video.py). With one view the
        logits decide, so classes whose float32 probabilities round to the same value (an
        untrained model's) are still told apart."""
        scores = (tf.cast(self.model(images, training=False), tf.float32) if self.single_view
                  else self._probabilities_graph(images))
        return _class_indices(scores)

    def _smoothed_graph(self, images, previous, keep):
        average = keep * previous + (1.0 - keep) * self._probabilities_graph(images)  # (B, H, W, C)
        return average, _class_indices(average)

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
        """(B, H, W, 3) float32 images -> (B, H, W, C) float32 class probabilities (whole images)."""
        self.check_size(*images.shape[1:3])
        return self._probabilities_of(tf.convert_to_tensor(images, tf.float32))

    def smoothed(self, images, previous: tf.Tensor | None = None, keep: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
        """onboard.Predictor.smoothed in one graph call; tf.Tensors in and out."""
        self.check_size(*images.shape[1:3])
        images = tf.convert_to_tensor(images, tf.float32)
        if previous is None or tuple(previous.shape[:3]) != tuple(images.shape[:3]):
            previous, keep = tf.zeros(tuple(images.shape[:3]) + (num_classes_of(self.model),), tf.float32), 0.0
        return self._smoothed_of(images, previous, tf.constant(keep, tf.float32))

    def frame_scores(self, images) -> FrameScores:
        """A video frame's model step, for the model's thread: (B, H, W, 3) float32 images ->
        FrameScores. One view of a model of any size gives its logits, leaving even the softmax
        to finish_frame on another thread; a model whose last layer upsamples its logits to the
        image's size (model.coarse_logits_model: build_deeplabv3's) leaves that upsampling to
        finish_frame too, and gives (B, h, w, C) logits at the network's output stride (h = H/16
        or H/8). Flips, scales and fixed-size models give averaged probabilities."""
        self.check_size(*images.shape[1:3])
        images = tf.convert_to_tensor(images, tf.float32)
        if self._coarse_of is not None:
            return FrameScores(self._coarse_of(images), True, tuple(int(d) for d in images.shape[1:3]))
        if self.single_view:
            return FrameScores(self._logits_of(images), True)
        return FrameScores(self._probabilities_of(images), False)

    @functools.cached_property
    def _coarse_of(self):
        """The network without its last upsampling (model.coarse_logits_model) as one graph, or
        None when the model cannot be cut there. Made on first use: only video frames need it."""
        if not (self._cut_frames and self.single_view and getattr(self.model, "traceable", True)):
            return None
        coarse = _model.coarse_logits_model(self.model)
        if coarse is None:
            return None
        return tf.function(lambda x: coarse(x, training=False), reduce_retracing=True,
                           input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])

    @property
    def coarse_frames(self) -> bool:
        """Whether frame_scores leaves the model's last upsampling to finish_frame / frame_masks."""
        return self._coarse_of is not None

    @staticmethod
    def _full_size(frame: FrameScores) -> tf.Tensor:
        """A frame's (B, H, W, C) scores: coarse logits upsampled as the model's last layer does."""
        return frame.scores if frame.size is None else _model.ResizeLike.resize(frame.scores, frame.size)

    def frame_masks(self, frame: FrameScores) -> tf.Tensor:
        """frame_scores' logits -> (B, H, W) uint8 argmax, after the model's last upsampling
        when frame_scores left it out: a plain video frame's rest, for the writer's thread."""
        if not frame.logits:
            raise ValueError("frame_masks needs logits; averaged probabilities go through finish_frame")
        if self._argmax_of is None:
            self._argmax_of = tf.function(_class_indices, jit_compile=True)
        return self._argmax_of(self._full_size(frame))

    def finish_frame(self, frame: FrameScores, previous: tf.Tensor | None, keep: float,
                     profile: str | navigation.Profile | None = None, class_costs=None
                     ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """The rest of a video frame, after frame_scores, for a thread beside the model's.

        The upsampling of coarse logits (the model's last layer, left out by frame_scores), the
        softmax (of logits), the running average keep * previous + (1 - keep) * p (previous
        None, or another size: start afresh), its (B, H, W) uint8 argmax and, with a profile and
        (C,) class costs, its (B, H, W) cost map (cost_map_graph) -> (average, mask, cost or
        None). Everything after the upsampling is one XLA-compiled graph: a few passes over the
        (B, H, W, C) floats, which are memory bound, half the CPU time of the same ops one
        kernel at a time (6.9 against 10.3 ms at 256x256x21 on a 2-core Xeon). One compilation
        per frame size and profile. The upsampling stays outside it: TensorFlow's own kernel
        is the model's (so masks and costs are the same as from the whole model), and XLA's
        bilinear resize took 25 ms where that kernel takes 2 (256x256x21, AVX2 EPYC).
        """
        spec = None if profile is None else navigation.profile_of(profile)
        scores, logits = self._full_size(frame), frame.logits  # (B, H, W, C)
        num_classes = int(scores.shape[-1])
        costs = np.zeros(num_classes, np.float32) if spec is None else np.asarray(class_costs, np.float32)
        if costs.shape != (num_classes,):
            raise ValueError(f"class_costs has shape {costs.shape} but the model has {num_classes} classes")
        if previous is None or tuple(previous.shape) != tuple(scores.shape):
            previous, keep = tf.zeros(scores.shape, tf.float32), 0.0
        key = (bool(logits), spec)
        if key not in self._finish_of:
            def finish(x, previous_average, keep_fraction, costs_in):
                p = tf.nn.softmax(x, axis=-1) if logits else x
                average = keep_fraction * previous_average + (1.0 - keep_fraction) * p  # (B, H, W, C)
                cost = None if spec is None else cost_map_graph(average, spec, costs_in)
                return average, _class_indices(average), cost

            self._finish_of[key] = tf.function(finish, jit_compile=True)
        return self._finish_of[key](scores, previous, tf.constant(keep, tf.float32), tf.constant(costs))

    def _masks(self, images: np.ndarray) -> np.ndarray:
        if self.fixed_size is not None and self.logits_decide(*images.shape[1:3]):
            # A fixed-size model fed its own size: its logits decide (the graph's single_view
            # covers models of any size), as in onboard.Predictor.
            return np.asarray(_class_indices(tf.cast(self.model(images, training=False), tf.float32)))
        return np.asarray(self._masks_of(tf.convert_to_tensor(images)))
