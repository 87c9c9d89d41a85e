"""Inference without TensorFlow: `.tflite` under LiteRT, `.onnx` under ONNX Runtime, NumPy for the rest.

    python predict.py --model export/model_float32.tflite --camera 0 --navigation safe
    python predict.py --model export/model.onnx --video drive.mp4 --out runs/

This is what runs on the vehicle (requirements-car.txt: ai-edge-litert, onnxruntime, NumPy,
Pillow, OpenCV). Neither this module nor what it imports (kit.data, kit.voc, kit.errors) imports
TensorFlow or Keras; tests/test_onboard.py runs predict.py where both imports fail.

`Predictor` is the structure that kit/inference.py's Predictor shares: the views (flips,
scales), the sliding windows and the smoothing over video frames, with NumPy kernels here and
TensorFlow graph kernels there. The NumPy bilinear resize repeats tf.image.resize's arithmetic
(half-pixel centres, no antialiasing, the same float32 operations in the same order), so it
gives the same bits; the softmax differs from TensorFlow's in the last bit at most, so the
masks equal the TensorFlow path's on the same file except where two classes' probabilities
tie to within float32 rounding.

The classes of an exported file come from `classes.json` beside it (export.py writes it), the
config.json of its run, or a --labelmap; never guessed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kit import data
from kit.data import ClassTable, classes_from_json_file
from kit.errors import KitError

CLASSES_FILE = "classes.json"  # written beside exported models: their class table
SUFFIXES = (".tflite", ".onnx")  # the files this module runs
# Below this many pixels on a side, an output-stride-16 network has no feature map left to
# resize (TensorFlow fails deep inside ResizeBilinear); fixed-size models resize the input anyway.
MIN_SIDE = 16


class ModelFileError(KitError, ValueError):
    """A model path that is missing or holds no model we can load."""


class ImageSizeError(KitError, ValueError):
    """An image too small for the model to segment."""


class RuntimeMissing(KitError, ImportError):
    """The package that runs a model format is not installed; the message says which to install."""


# ----------------------------------------------------------------------------- models

def _import_runtime(module: str, package: str, path: Path):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise RuntimeMissing(f"running {path} needs the {package} package ({err}): pip install -r "
                             f"requirements-car.txt (on the vehicle) or pip install -r requirements.txt") from None


def _check_io(path: Path, input_shape: tuple, output_shape: tuple) -> None:
    """ModelFileError unless the model takes (N, H, W, 3) images and returns (N, H, W, C) logits."""
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise ModelFileError(f"{path} takes input of shape {_shape(input_shape)}, not (N, H, W, 3) RGB images: "
                             f"export the model with export.py")
    if len(output_shape) != 4 or output_shape[-1] is None:
        raise ModelFileError(f"{path} returns shape {_shape(output_shape)}, not (N, H, W, classes) logits: "
                             f"export the model with export.py")


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class LiteRTModel:
    """A TFLite segmentation model behind the same call as a Keras model: images -> logits.

    TFLite models from export.py take one (1, H, W, 3) image of a fixed size; larger batches
    are run one image at a time. A full-integer model with int8 (or uint8) input and output
    (`export.py --int8-io`) is fed images quantized with its input's scale and zero point, and
    its output is dequantized with the output's, so callers see float32 logits either way.
    """

    traceable = False  # the interpreter runs eagerly, outside tf.function

    def __init__(self, path: str | Path, num_threads: int | None = None):
        interpreter = _import_runtime("ai_edge_litert.interpreter", "ai-edge-litert", Path(path))
        self.interpreter = interpreter.Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])  # (1, H, W, 3)
        self.output_shape = tuple(int(d) for d in self._output["shape"])  # (1, H, W, C)
        _check_io(Path(path), self.input_shape, self.output_shape)

    def __call__(self, images, training=False):
        outputs = []
        for image in np.asarray(images, dtype=np.float32):
            self.interpreter.set_tensor(self._input["index"], self._quantize(image[None]))
            self.interpreter.invoke()
            outputs.append(self._dequantize(self.interpreter.get_tensor(self._output["index"])[0]))
        return np.stack(outputs)  # (B, H, W, C) logits

    def kernels(self) -> dict[str, dict[str, int]]:
        """Which kernels run this model's ops here: delegated_ops(self.interpreter)."""
        return delegated_ops(self.interpreter)

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


def delegated_ops(interpreter) -> dict[str, dict[str, int]]:
    """{"xnnpack": {op: count}, "builtin": {op: count}}: the ops of a LiteRT interpreter's model
    that its delegate runs, and those left to TFLite's own (builtin) kernels.

    The Interpreter as LiteRTModel makes it (the default op resolver) hands every op that
    XNNPACK supports to XNNPACK, its only default delegate on CPUs; an op it refuses (a type,
    a quantization it has no kernel for) stays on a builtin kernel and splits the graph into
    several delegate partitions. Each partition is one DELEGATE node appended to the op list,
    its original ops kept beside it: a partition's ops are those that its outputs depend on
    back to its inputs, found by walking the producers of its outputs (the op list is
    `Interpreter._get_ops_details()`, the accessor TensorFlow's float_ops check reads too).
    """
    ops = interpreter._get_ops_details()
    nodes = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op for op in nodes for t in op["outputs"] if t >= 0}
    delegated: set[int] = set()
    for node in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in node["inputs"]}
        pending = [int(t) for t in node["outputs"]]
        while pending:
            tensor = pending.pop()
            op = producer.get(tensor)
            if tensor in boundary or op is None or op["index"] in delegated:
                continue
            delegated.add(op["index"])
            pending.extend(int(t) for t in op["inputs"] if t >= 0)
    split: dict[str, dict[str, int]] = {"xnnpack": {}, "builtin": {}}
    for op in nodes:
        side = split["xnnpack" if op["index"] in delegated else "builtin"]
        side[op["op_name"]] = side.get(op["op_name"], 0) + 1
    return split


class OnnxModel:
    """An ONNX segmentation model under ONNX Runtime behind the same call: images -> logits.

    export.py writes a (N, size, size, 3) float32 input: any batch, a fixed image size. The
    providers default to what this ONNX Runtime build offers, in its order of preference
    (a Jetson build lists TensorRT and CUDA before the CPU); `providers` picks them instead.
    """

    traceable = False

    def __init__(self, path: str | Path, num_threads: int | None = None, providers: list[str] | None = None):
        ort = _import_runtime("onnxruntime", "onnxruntime", Path(path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1  # one graph, run op by op: threads go inside the ops
        options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
        # The Azure provider, listed first by the stock wheels, calls remote endpoints: it runs no local op.
        local = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers or local)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs, not one image in "
                                 f"and one map of logits out: export the model with export.py")
        self._input, self._output = inputs[0].name, outputs[0].name
        for io in (inputs[0], outputs[0]):
            if io.type != "tensor(float)":
                raise ModelFileError(f"{path}: its {io.name!r} is {io.type}, not float32: export the model with "
                                     f"export.py")
        # Named or unknown dimensions (the batch) are None, as in Keras' shapes.
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.output_shape = tuple(d if isinstance(d, int) else None for d in outputs[0].shape)
        _check_io(Path(path), self.input_shape, self.output_shape)

    def __call__(self, images, training=False):
        return self.session.run([self._output], {self._input: np.asarray(images, dtype=np.float32)})[0]


def load_model(path: str | Path, num_threads: int | None = None):
    """A `.tflite` (LiteRT) or `.onnx` (ONNX Runtime) model, loaded without TensorFlow.

    Raises ModelFileError naming the path when there is no model there, it cannot be read, or
    it does not take (N, H, W, 3) images; RuntimeMissing when the runtime is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model at {path}; export one first (python export.py) or pass --model")
    if path.suffix.lower() not in SUFFIXES:
        raise ModelFileError(f"{path}: without TensorFlow only .tflite and .onnx files run (export.py writes them)")
    loader = LiteRTModel if path.suffix.lower() == ".tflite" else OnnxModel
    try:
        return loader(path, num_threads)
    except (ModelFileError, RuntimeMissing):
        raise
    except Exception as err:  # a truncated, foreign or corrupt file: the runtimes raise many types
        raise ModelFileError(f"{path} cannot be loaded as a model ({type(err).__name__}: {str(err)[:300]}); "
                             f"is it complete, and written by export.py?") from err


def runs_without_tensorflow(path: str | Path) -> bool:
    """Whether load_model here runs this model file (else it needs kit/inference.py)."""
    return Path(path).suffix.lower() in SUFFIXES  # MODEL.ONNX from a FAT card too


# ----------------------------------------------------------------------------- classes and images

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


def classes_for_model(path: str | Path, model=None, labelmap: str | Path | None = None,
                      guess_voc: bool = True) -> ClassTable:
    """The class table of a model file: `labelmap` if given; else classes.json beside it (exports);
    else the config.json of its run (beside it, or one or two folders up: state/, export/);
    else, with `guess_voc`, VOC's if the model predicts 21 classes; else ModelFileError."""
    path = Path(path)
    if labelmap:
        return ClassTable.from_labelmap(labelmap)
    folder = path if path.is_dir() else path.parent
    if (folder / CLASSES_FILE).is_file():
        try:
            return classes_from_json_file(folder / CLASSES_FILE)
        except (ValueError, KeyError, TypeError) as err:
            raise ModelFileError(f"{folder / CLASSES_FILE} is not a class table as export.py writes it "
                                 f"({type(err).__name__}: {err}); copy the one export.py wrote, or pass "
                                 f"--labelmap FILE") from None
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
    if guess_voc and (model is None or num_classes_of(model) == voc.num_classes):
        return voc
    predicts = f" predicts {num_classes_of(model)} classes and" if model is not None else ""
    raise ModelFileError(f"{path}{predicts} has no {CLASSES_FILE} beside it (nor a run's config.json) to say "
                         f"which: copy the {CLASSES_FILE} that export.py wrote beside it, or pass --labelmap FILE")


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


# ----------------------------------------------------------------------------- NumPy kernels

def _interpolation(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TensorFlow's bilinear weights along one axis (half-pixel centres): lower and upper input
    indices and the float32 fraction towards the upper, per output index."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, H, W, C) float32 -> (B, h, w, C), the same bits as tf.image.resize(x, size) (bilinear).

    TensorFlow computes top = tl + (tr - tl) * dx, bottom = bl + (br - bl) * dx, then
    top + (bottom - top) * dy; interpolating every input row along x first and then picking
    rows is the same arithmetic on fewer elements.
    """
    x = np.asarray(x, dtype=np.float32)
    height, width = int(size[0]), int(size[1])
    if x.shape[1:3] == (height, width):
        return x  # half-pixel weights at scale 1 are 0: TensorFlow's result is the input's bits
    left, right, dx = _interpolation(width, x.shape[2])
    rows = np.take(x, left, axis=2)  # (B, H, w, C)
    step = np.take(x, right, axis=2)
    step -= rows
    step *= dx[None, None, :, None]
    rows += step
    top, bottom, dy = _interpolation(height, x.shape[1])
    out = np.take(rows, top, axis=1)  # (B, h, w, C)
    step = np.take(rows, bottom, axis=1)
    step -= out
    step *= dy[None, :, None, None]
    out += step
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32, shifted by the maximum as TensorFlow's is."""
    shifted = np.asarray(logits, dtype=np.float32) - np.max(logits, axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def class_indices(scores: np.ndarray) -> np.ndarray:
    """(B, H, W, C) scores -> (B, H, W) uint8 argmax over C (class tables have at most 255 classes)."""
    return np.argmax(scores, axis=-1).astype(np.uint8)


# ----------------------------------------------------------------------------- the predictor

class Predictor:
    """Softmax probabilities and masks from a model, at each input's own size (NumPy kernels).

    Test-time augmentation averages the *probabilities* (not logits or votes) of every view,
    each resized back to the input's size: `scales` resizes the input by each factor, `flip`
    adds each view mirrored (and mirrors its probabilities back).

    mode "whole" runs the model on the whole image; "slide" runs it on crop_size windows every
    `stride` pixels and sums their probabilities where they overlap, keeping only one band of
    rows in memory (crop_size x W x C floats), so a 6000x4000 photo needs about 0.3 GB of
    accumulator rather than the whole (H, W, C) map; "auto" slides only images larger than
    max_pixels. Sliding gives masks (argmax), not probability maps.

    A model of a fixed input size (TFLite, export.py's ONNX) sees each view resized to that
    size, and its probabilities are resized back. kit/inference.py's Predictor subclasses this
    one with TensorFlow kernels.
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
        self.fixed_size = tuple(int(d) for d in fixed) if None not in fixed else None
        self.one_view = self.scales == (1.0,) and not self.flip
        # Logits rank classes as the probabilities do (softmax is monotonic) only for one view
        # at the image's own size: averaged views, or probabilities resized back from a
        # fixed-size model, can rank them differently.
        self.single_view = self.one_view and self.fixed_size is None

    def logits_decide(self, height: int, width: int) -> bool:
        """Whether the masks of a height x width image are the argmax of the model's logits: one
        view, and the image at the model's own size. Then classes whose float32 probabilities
        round to the same value are still told apart, and no softmax is computed."""
        return self.one_view and self.fixed_size in (None, (height, width))

    def check_size(self, height: int, width: int) -> None:
        """ImageSizeError unless the model can segment a height x width image."""
        if self.fixed_size is None and min(height, width) < MIN_SIDE:
            raise ImageSizeError(f"a {width}x{height} image is too small to segment: the model needs at least "
                                 f"{MIN_SIDE} pixels on each side")

    def probabilities(self, images):
        """(B, H, W, 3) float32 images -> (B, H, W, C) float32 class probabilities (whole images)."""
        images = np.asarray(images, dtype=np.float32)
        self.check_size(*images.shape[1:3])
        return self._probabilities(images)

    def smoothed(self, images, previous=None, keep: float = 0.0):
        """One step of a running average of probabilities over video frames.

        (B, H, W, 3) images and the previous (B, H, W, C) average (None, or another size: start
        afresh) -> (keep * previous + (1 - keep) * probabilities(images), its (B, H, W) uint8
        argmax). keep = 0 gives the probabilities and their masks.
        """
        images = np.asarray(images, dtype=np.float32)
        self.check_size(*images.shape[1:3])
        if previous is None or tuple(previous.shape[:3]) != tuple(images.shape[:3]):
            previous, keep = np.zeros(images.shape[:3] + (num_classes_of(self.model),), np.float32), 0.0
        return self._smoothed(images, previous, keep)

    def masks(self, images) -> np.ndarray:
        """(B, H, W, 3) float32 images -> (B, H, W) uint8 class indices."""
        images = np.asarray(images, dtype=np.float32)
        self.check_size(*images.shape[1:3])
        if self._slides(*images.shape[1:3]):
            self.slid += len(images)
            return np.stack([self._slide_mask(image) for image in images])
        return self._masks(images)

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
            images = resize_bilinear(images, (max(MIN_SIDE, int(height * factor)), max(MIN_SIDE, int(width * factor))))
        return np.asarray(self._probabilities(images))[0]

    def _slides(self, height: int, width: int) -> bool:
        big = height > self.crop_size or width > self.crop_size
        return big and (self.mode == "slide" or (self.mode == "auto" and height * width > self.max_pixels))

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
                p = np.asarray(self.probabilities(image[None, r:bottom, c:right])[0])  # (h, w, C)
                if acc is None:
                    acc = np.zeros((0, width, p.shape[-1]), np.float32)
                if bottom - top > len(acc):
                    acc = np.concatenate([acc, np.zeros((bottom - top - len(acc), width, p.shape[-1]), np.float32)])
                acc[r - top:bottom - top, c:right] += p
            final = (rows[i + 1] if i + 1 < len(rows) else height) - top
            out[top:top + final] = acc[:final].argmax(axis=-1)
            acc, top = acc[final:], top + final
        return out

    # The NumPy kernels; kit/inference.py's Predictor replaces these three with TensorFlow's.

    def _masks(self, images: np.ndarray) -> np.ndarray:
        if self.logits_decide(*images.shape[1:3]):
            return class_indices(np.asarray(self.model(images), dtype=np.float32))
        return class_indices(self._probabilities(images))

    def _smoothed(self, images: np.ndarray, previous: np.ndarray, keep: float):
        keep = np.float32(keep)
        average = keep * previous + (np.float32(1.0) - keep) * self._probabilities(images)  # (B, H, W, C)
        return average, class_indices(average)

    def _probabilities(self, images: np.ndarray) -> np.ndarray:
        size = images.shape[1:3]
        total = np.float32(0.0)
        for scale in self.scales:
            x = images
            if scale != 1.0:
                # As the graph does: float32 size times scale, rounded half to even, at least 1.
                scaled = np.maximum(np.round(np.asarray(size, np.float32) * np.float32(scale)).astype(np.int64), 1)
                x = resize_bilinear(images, tuple(scaled))
            views = [(x, False)] + ([(x[:, :, ::-1], True)] if self.flip else [])
            for view, mirrored in views:
                p = self._forward(np.ascontiguousarray(view))
                p = p[:, :, ::-1] if mirrored else p
                total = total + (resize_bilinear(p, size) if scale != 1.0 else p)
        return total / np.float32(len(self.scales) * (2 if self.flip else 1))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the model at x's size (resizing to a fixed-size model's input and back)."""
        size = x.shape[1:3]
        if self.fixed_size is not None:
            x = resize_bilinear(x, self.fixed_size)
        probs = softmax(self.model(x))
        return resize_bilinear(probs, size) if self.fixed_size is not None else probs
