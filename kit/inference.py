"""Inference: load a trained model (.keras, .tflite or SavedModel) and turn images into class masks.

Shared by evaluate.py and predict.py, so both score exactly the same predictions. Images are
float32 RGB in pipeline.IMAGE_RANGE, run at their own resolution; optional test-time
augmentation averages softmax probabilities over horizontal flips and scales.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

# Importing these registers the custom layers, losses and metrics for loading.
import losses  # noqa: F401
import metrics  # noqa: F401
import model as _model  # noqa: F401
from kit import data
from kit.data import ClassTable, classes_from_json_file
from kit.errors import KitError

CLASSES_FILE = "classes.json"  # written beside exported models: their class table


class ModelFileError(KitError, ValueError):
    """A model path that is missing or holds no model we can load."""


class ImageSizeError(KitError, ValueError):
    """An image too small for the model to segment."""


# Below this many pixels on a side, an output-stride-16 network has no feature map left to
# resize (TensorFlow fails deep inside ResizeBilinear); fixed-size models resize the input anyway.
MIN_SIDE = 16


class TFLiteModel:
    """A TFLite segmentation model behind the same call as a Keras model: images -> logits.

    TFLite models from export.py take one (1, H, W, 3) image of a fixed size; larger batches
    are run one image at a time. A full-integer model with int8 (or uint8) input and output
    (`export.py --int8-io`) is fed images quantized with its input's scale and zero point, and
    its output is dequantized with the output's, so callers see float32 logits either way.
    """

    traceable = False  # the interpreter runs eagerly, outside tf.function

    def __init__(self, path: str | Path, num_threads: int | None = None):
        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])  # (1, H, W, 3)
        self.output_shape = tuple(int(d) for d in self._output["shape"])  # (1, H, W, C)

    def __call__(self, images, training=False):
        outputs = []
        for image in np.asarray(images, dtype=np.float32):
            self.interpreter.set_tensor(self._input["index"], self._quantize(image[None]))
            self.interpreter.invoke()
            outputs.append(self._dequantize(self.interpreter.get_tensor(self._output["index"])[0]))
        return np.stack(outputs)  # (B, H, W, C) logits

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._input["dtype"])
        if dtype == np.float32:
            return x
        scale, zero = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if np.dtype(self._output["dtype"]) == np.float32:
            return y
        scale, zero = self._output["quantization"]
        return (y.astype(np.float32) - zero) * scale


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
    """A `.keras` model (loaded with safe_mode), a `.tflite` file or a SavedModel folder.

    Raises ModelFileError naming the path when there is no model there or it cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelFileError(f"{path} is a folder without saved_model.pb: not a SavedModel from export.py")
        loader = SavedModel
    elif not path.is_file():
        raise ModelFileError(f"no model at {path}; train one first (python train.py) or pass --model")
    elif path.suffix == ".tflite":
        loader = TFLiteModel
    elif path.suffix == ".keras":
        loader = lambda p: keras.models.load_model(p, compile=False, safe_mode=True)  # noqa: E731
    else:
        raise ModelFileError(f"{path}: expected a .keras or .tflite file, or a SavedModel folder")
    try:
        return loader(path)
    except Exception as err:  # a truncated, foreign or corrupt file: Keras and TFLite raise many types
        raise ModelFileError(f"{path} cannot be loaded as a model ({type(err).__name__}: {str(err)[:300]}); "
                             f"is it complete, and written by train.py or export.py?") from err


def num_classes_of(model) -> int:
    """The number of classes a loaded model predicts (its logits' last axis)."""
    return int(model.output_shape[-1])


def check_classes(model, classes: ClassTable, path) -> None:
    """ModelFileError if the model and the class table disagree on the number of classes."""
    layers = getattr(model, "layers", None) or []
    if layers and layers[-1].name == "logits_and_aux":  # model.training_model's output: (B, H, W, 2C)
        raise ModelFileError(f"{path} is a training checkpoint with the auxiliary head (--aux-loss), whose "
                             f"output holds two sets of logits; predict with the run's best.keras, which "
                             f"train.py saves without that head")
    if num_classes_of(model) != classes.num_classes:
        raise ModelFileError(f"{path} predicts {num_classes_of(model)} classes but the data has "
                             f"{classes.num_classes} ({', '.join(classes.names[:6])}...)")


def classes_for_model(path: str | Path, model=None, labelmap: str | Path | None = None) -> ClassTable:
    """The class table of a model file: `labelmap` if given; else classes.json beside it (exports);
    else the config.json of its run (beside it, or one or two folders up: state/, export/);
    else VOC's, if the model predicts 21 classes."""
    path = Path(path)
    if labelmap:
        return ClassTable.from_labelmap(labelmap)
    folder = path if path.is_dir() else path.parent
    if (folder / CLASSES_FILE).is_file():
        return classes_from_json_file(folder / CLASSES_FILE)
    for run_dir in (folder, folder.parent, folder.parent.parent):
        run_config = run_dir / "config.json"
        if run_config.is_file():
            try:
                saved = json.loads(run_config.read_text())
            except ValueError:
                continue
            if isinstance(saved, dict) and "classes" in saved:
                return ClassTable.from_json(saved["classes"])
    voc = ClassTable.voc()
    if model is None or num_classes_of(model) == voc.num_classes:
        return voc
    raise ModelFileError(f"{path} predicts {num_classes_of(model)} classes and no classes.json or run config.json "
                         f"says which: pass --labelmap FILE")


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 255] from any image file PIL reads.

    Decoded as training decodes it (data.read_rgb: upright by its EXIF orientation, 16-bit
    images scaled to 8-bit range, not clipped), without rounding them to whole values.
    """
    return data.read_rgb(path, np.float32)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Starts of windows of `window` pixels every `stride` that cover 0..size, the last flush
    with the end (one window at 0 when the image is no larger than it)."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else starts + [size - window]


def _class_indices(scores: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) scores -> (B, H, W) uint8 argmax over C (class tables have at most 255 classes)."""
    return tf.cast(tf.argmax(scores, axis=-1, output_type=tf.int32), tf.uint8)


class Predictor:
    """Softmax probabilities and masks from a model, at each input's own size.

    Test-time augmentation averages the *probabilities* (not logits or votes) of every view,
    each resized back to the input's size: `scales` resizes the input by each factor, `flip`
    adds each view mirrored (and mirrors its probabilities back).

    mode "whole" runs the model on the whole image; "slide" runs it on crop_size windows every
    `stride` pixels and sums their probabilities where they overlap, keeping only one band of
    rows in memory (crop_size x W x C floats), so a 6000x4000 photo needs about 0.3 GB of
    accumulator rather than the whole (H, W, C) map; "auto" slides only images larger than
    max_pixels. Sliding gives masks (argmax), not probability maps.
    """

    def __init__(self, model, flip: bool = False, scales=(1.0,), mode: str = "whole", crop_size: int = 513,
                 stride: int = 341, max_pixels: int = 2048 * 2048):
        if mode not in ("whole", "slide", "auto"):
            raise ValueError(f"unknown inference mode {mode!r}; choose whole, slide or auto")
        if not 0 < stride <= crop_size:
            raise ValueError(f"the sliding stride must be between 1 and the crop size {crop_size}, got {stride}")
        self.model, self.flip, self.scales = model, flip, tuple(float(s) for s in scales)
        self.mode, self.crop_size, self.stride, self.max_pixels = mode, int(crop_size), int(stride), int(max_pixels)
        self.slid = 0  # images run window by window so far
        fixed = model.input_shape[1:3]
        self.fixed_size = tuple(fixed) if None not in fixed else None
        # Logits rank classes as the probabilities do (softmax is monotonic) only for one view
        # at the image's own size: averaged views, or probabilities resized back from a
        # fixed-size model, can rank them differently.
        self.single_view = self.scales == (1.0,) and not self.flip and self.fixed_size is None
        self._probabilities, self._masks = self._probabilities_graph, self._masks_graph
        self._smoothed = self._smoothed_graph
        if getattr(model, "traceable", True):
            # One trace for every image size: the signatures leave H and W unknown.
            images = tf.TensorSpec((None, None, None, 3), tf.float32)
            self._probabilities = tf.function(self._probabilities_graph, reduce_retracing=True,
                                              input_signature=[images])
            self._masks = tf.function(self._masks_graph, reduce_retracing=True, input_signature=[images])
            self._smoothed = tf.function(self._smoothed_graph, reduce_retracing=True, input_signature=[
                images, tf.TensorSpec((None, None, None, None), tf.float32), tf.TensorSpec((), tf.float32)])

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

    def check_size(self, height: int, width: int) -> None:
        """ImageSizeError unless the model can segment a height x width image."""
        if self.fixed_size is None and min(height, width) < MIN_SIDE:
            raise ImageSizeError(f"a {width}x{height} image is too small to segment: the model needs at least "
                                 f"{MIN_SIDE} pixels on each side")

    def probabilities(self, images) -> tf.Tensor:
        """(B, H, W, 3) float32 images -> (B, H, W, C) float32 class probabilities (whole images)."""
        self.check_size(*images.shape[1:3])
        return self._probabilities(tf.convert_to_tensor(images, tf.float32))

    def smoothed(self, images, previous: tf.Tensor | None = None, keep: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
        """One step of a running average of probabilities over video frames, in one graph call.

        (B, H, W, 3) images and the previous (B, H, W, C) average (None, or another size: start
        afresh) -> (keep * previous + (1 - keep) * probabilities(images), its (B, H, W) uint8
        argmax). keep = 0 gives the probabilities and their masks.
        """
        self.check_size(*images.shape[1:3])
        images = tf.convert_to_tensor(images, tf.float32)
        if previous is None or tuple(previous.shape[:3]) != tuple(images.shape[:3]):
            previous, keep = tf.zeros(tuple(images.shape[:3]) + (num_classes_of(self.model),), tf.float32), 0.0
        return self._smoothed(images, previous, tf.constant(keep, tf.float32))

    def planning_probabilities(self, images) -> np.ndarray:
        """(1, H, W, 3) float32 -> (h, w, C) float32 probabilities for a planner, within the memory
        the mode allows.

        A planner needs the probability map but not every pixel of a 24 MP photo: where masks()
        would slide (mode slide, or auto above max_pixels), the image is first scaled down to
        max_pixels (auto) or one crop_size window's area (slide), keeping its aspect ratio, so
        (h, w) may be smaller than (H, W). Otherwise the whole image is run, as probabilities().
        """
        images = np.asarray(images, dtype=np.float32)
        height, width = images.shape[1:3]
        self.check_size(height, width)
        if self._slides(height, width):
            budget = self.max_pixels if self.mode == "auto" else self.crop_size * self.crop_size
            factor = min(1.0, (budget / (height * width)) ** 0.5)
            size = (max(MIN_SIDE, int(height * factor)), max(MIN_SIDE, int(width * factor)))
            images = tf.image.resize(images, size, antialias=True)
        return self._probabilities(tf.convert_to_tensor(images, tf.float32))[0].numpy()

    def _slides(self, height: int, width: int) -> bool:
        big = height > self.crop_size or width > self.crop_size
        return big and (self.mode == "slide" or (self.mode == "auto" and height * width > self.max_pixels))

    def masks(self, images) -> np.ndarray:
        """(B, H, W, 3) float32 images -> (B, H, W) uint8 class indices."""
        images = np.asarray(images, dtype=np.float32)
        self.check_size(*images.shape[1:3])
        if self._slides(*images.shape[1:3]):
            self.slid += len(images)
            return np.stack([self._slide_mask(image) for image in images])
        return np.asarray(self._masks(tf.convert_to_tensor(images)))

    def _slide_mask(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) -> (H, W) uint8 by overlapping windows, one band of rows at a time.

        Rows above the next band's first window row get no more windows, so their summed
        probabilities are final: take their argmax and drop them from the accumulator.
        """
        height, width = image.shape[:2]
        rows = window_starts(height, self.crop_size, self.stride)
        cols = window_starts(width, self.crop_size, self.stride)
        out = np.zeros((height, width), np.uint8)
        top, acc = 0, None  # acc: (rows from `top`, W, C) summed probabilities
        for i, r in enumerate(rows):
            bottom = min(r + self.crop_size, height)
            for c in cols:
                right = min(c + self.crop_size, width)
                p = self.probabilities(image[None, r:bottom, c:right])[0].numpy()  # (h, w, C)
                if acc is None:
                    acc = np.zeros((0, width, p.shape[-1]), np.float32)
                if bottom - top > len(acc):
                    acc = np.concatenate([acc, np.zeros((bottom - top - len(acc), width, p.shape[-1]), np.float32)])
                acc[r - top:bottom - top, c:right] += p
            final = (rows[i + 1] if i + 1 < len(rows) else height) - top
            out[top:top + final] = acc[:final].argmax(axis=-1)
            acc, top = acc[final:], top + final
        return out
