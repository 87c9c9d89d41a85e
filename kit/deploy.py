"""Deployment: convert a trained model into every format the vehicle could run, and measure each.

    python export.py --run-dir eval/demo --report      # the wiring; this module does the work

Formats, by the names the export report uses (`--formats` also takes the short names that
export.py has always taken: float32, float16, int8):

| name | short | file | what |
| --- | --- | --- | --- |
| keras | | the run's `best.keras` | the source; every other format is compared with it |
| savedmodel | savedmodel | `saved_model/` | TensorFlow graph, any input size |
| tflite_float32 | float32 | `model_float32.tflite` | fixed (1, size, size, 3) input, as are all TFLite files |
| tflite_float16 | float16 | `model_float16.tflite` | float16 weights, float32 compute |
| tflite_dynamic_int8 | int8 | `model_int8.tflite` | int8 weights, activations quantized on the fly |
| tflite_full_int8 | full_int8 | `model_full_int8.tflite` | int8 weights and activations, calibrated on training images |
| onnx | onnx | `model.onnx` | (N, size, size, 3) input, any batch; opset ONNX_OPSET, through tf2onnx (Keras' exporter) |

`measure` scores each format on the run's test images with metrics.ConfusionMatrix (the one
evaluator), its pixel agreement with Keras, and its latency at batch 1 with 1, 2 and all
threads. TFLite (under LiteRT) and ONNX (under ONNX Runtime's CPU provider) run as the vehicle
runs them (kit/onboard.py); their threads are the interpreter's `num_threads` and the
session's intra-op threads. TensorFlow fixes its thread pools
when its runtime starts, once per process, so Keras and SavedModel are timed in a fresh Python
process per thread count (`tf.config.threading`: that many intra-op threads, one inter-op).
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import warnings
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from kit import atomic
import metrics
import pipeline
from kit import inference
from kit import onboard
from kit import runtime
from kit.data import DataError
from kit.errors import KitError
from kit.kernels import onednn_enabled

ROOT = Path(__file__).resolve().parents[1]  # the repository: chapter modules and kit/


@dataclass(frozen=True)
class Format:
    short: str  # the --formats name export.py has always taken, and parity.json's key
    file: str | None  # written into the export folder (None: the Keras model itself)
    tflite: str | None = None  # the converter recipe, for TFLite files


FORMATS = {
    "keras": Format("keras", None),
    "savedmodel": Format("savedmodel", "saved_model"),
    "tflite_float32": Format("float32", "model_float32.tflite", "float32"),
    "tflite_float16": Format("float16", "model_float16.tflite", "float16"),
    "tflite_dynamic_int8": Format("int8", "model_int8.tflite", "dynamic_int8"),
    "tflite_full_int8": Format("full_int8", "model_full_int8.tflite", "full_int8"),
    "onnx": Format("onnx", "model.onnx"),
}
GATED = ("savedmodel", "tflite_float32", "tflite_float16", "onnx")  # must agree with Keras on PARITY_FLOOR
PARITY_FLOOR = 0.999  # of pixels
# ONNX opset 17 (ONNX 1.12, 2022): the one TensorRT 8.6's release notes target, within what
# tf2onnx 1.17 writes (up to 18) and ONNX Runtime reads. Read back from the file (onnx_facts).
ONNX_OPSET = 17
ONNX_CONVERTER = "tf2onnx==1.17.0 onnx==1.23.2"  # what requirements.txt pins for the conversion
FULL_INT8_TARGET = {"agreement": 0.99, "mean_iou_drop": 0.01}  # against Keras, and tflite_float32
THREADS = {"1": 1, "2": 2, "all": os.cpu_count() or 1}
# Ops allowed to touch float tensors in a full-integer model: the conversions at its edges.
EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")


class ExportError(KitError):
    """An export that does not do what it must (it disagrees with Keras, or is not integer)."""


def resolve_formats(spec: str) -> list[str]:
    """Canonical format names, in FORMATS order, from a comma-separated list of canonical or
    short names ("all" for every one). ExportError names the unknown ones."""
    by_short = {f.short: name for name, f in FORMATS.items()}
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in FORMATS and w not in by_short and w != "all"]
    if unknown or not wanted:
        choices = ", ".join(f"{n} ({f.short})" if f.short != n else n for n, f in FORMATS.items())
        raise ExportError(f"unknown formats {unknown or [spec]}; choose from all, {choices}")
    if "all" in wanted:  # after the check: "all,bogus" is a typo to report, not "all"
        return list(FORMATS)
    chosen = {by_short.get(w, w) for w in wanted}
    return [name for name in FORMATS if name in chosen]


# ----------------------------------------------------------------------------- conversion

def write_serving_archive(model, path: str | Path, size: int | None = None) -> None:
    """A SavedModel at `path` whose `serve(image)` returns the model's logits.

    Input (1, size, size, 3) float32, or (None, None, None, 3) when `size` is None. Inference
    only: the gradient functions of custom-gradient layers (a dilated conv forced to the portable kernel) are
    not traced into it, which also keeps a ResNet-50 export about 15 s shorter here.
    """
    shape = (1, size, size, 3) if size else (None, None, None, 3)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    archive.write_out(str(path), options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
                      verbose=False)


def export_saved_model(model, path: Path) -> None:
    """A TensorFlow SavedModel whose serving signature takes any image size, written into a
    temporary folder and swapped into place when complete."""
    with atomic.folder(path, replace=True) as tmp:
        write_serving_archive(model, tmp)


def tflite_files(model, size: int, kinds, calibration: list[np.ndarray] | None = None, int8_io: bool = False):
    """Yield (kind, TFLite bytes) of `model` for a (1, size, size, 3) input, for each of `kinds`.

    kind: float32; float16 (weights); dynamic_int8 (or int8: int8 weights, activations
    quantized at run time); full_int8 (weights and activations int8, their ranges calibrated on
    `calibration`, (1, size, size, 3) float32 images preprocessed as in training; only integer
    builtin ops are allowed, so a float op fails the conversion). int8_io: the full-int8 model
    takes and returns int8 tensors (scale and zero point in its input and output details)
    instead of quantizing float32 at its edges.

    Converts from one fixed-shape SavedModel, written once for all kinds: converting a
    concrete function of a Keras 3 model directly dropped its weights here (a 0.2 MB file
    predicting garbage).
    """
    unknown = set(kinds) - {"float32", "float16", "int8", "dynamic_int8", "full_int8"}
    if unknown:
        raise ValueError(f"unknown TFLite kinds {sorted(unknown)}")
    if "full_int8" in kinds and not calibration:
        raise ValueError("full-integer quantization needs calibration images")
    # Loading the archive warns once per conversion that a custom-gradient layer's gradients (a
    # dilated conv forced to the portable kernel) were not saved; they were left out on purpose
    # (write_serving_archive).
    absl = logging.getLogger("absl")
    level = absl.level
    with tempfile.TemporaryDirectory() as tmp:
        write_serving_archive(model, tmp, size)
        absl.setLevel(logging.ERROR)
        try:
            yield from _convert(tmp, kinds, calibration, int8_io)
        finally:
            absl.setLevel(level)


def _convert(saved_model: str, kinds, calibration, int8_io: bool):
    for kind in kinds:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if kind != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # without more: dynamic-range int8
        if kind == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if kind == "full_int8":
            converter.representative_dataset = lambda: ([image] for image in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        yield kind, converter.convert()


def check_onnx_converter() -> None:
    """ExportError naming the packages to install when the ONNX converter is missing."""
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as err:
        raise ExportError(f"--formats onnx needs the ONNX converter ({err}): pip install {ONNX_CONVERTER} "
                          f"(or pip install -r requirements.txt), or leave onnx out of --formats") from None


def export_onnx(model, path: str | Path, size: int) -> None:
    """`model` as ONNX at `path`: input "image" (N, size, size, 3) float32, any batch N; output
    the (N, size, size, C) logits; opset ONNX_OPSET.

    Keras' own exporter (`Model.export(format="onnx")`) traces the inference call and hands it
    to tf2onnx, with Keras' fixes for NumPy 2 applied to tf2onnx first. Written to a temporary
    name and renamed into place.
    """
    check_onnx_converter()
    signature = [keras.InputSpec(shape=(None, size, size, 3), dtype="float32", name="image")]
    with atomic.file(path) as tmp, warnings.catch_warnings():
        # Keras' NumPy-2 patch of tf2onnx probes np.object, which NumPy warns about, on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        tf2onnx_log = logging.getLogger("tf2onnx")
        level = tf2onnx_log.level
        tf2onnx_log.setLevel(logging.ERROR)  # it logs every rewrite pass at INFO and WARNING
        try:
            model.export(str(tmp), format="onnx", input_signature=signature, opset_version=ONNX_OPSET, verbose=False)
        finally:
            tf2onnx_log.setLevel(level)


def onnx_facts(path: str | Path) -> dict:
    """What an ONNX file is, read from the file: its opset, producer, and input and output shapes."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)

    def shape(value):
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    return {"opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "input": {"name": proto.graph.input[0].name, "shape": shape(proto.graph.input[0])},
            "output": {"name": proto.graph.output[0].name, "shape": shape(proto.graph.output[0])}}


def tflite_bytes(model, size: int, kind: str, calibration: list[np.ndarray] | None = None,
                 int8_io: bool = False) -> bytes:
    """One kind of tflite_files."""
    return dict(tflite_files(model, size, [kind], calibration, int8_io))[kind]


def float_ops(path: str | Path) -> list[str]:
    """What keeps a TFLite model from being integer-only: "OP: tensor (dtype)" for every op
    other than a QUANTIZE fed by the model's input or a DEQUANTIZE writing its output that
    reads or writes a tensor which is not int8 (int32 is allowed: biases and shapes).

    Read from the interpreter's own op list (`Interpreter._get_ops_details()`, TensorFlow's
    private but stable accessor; tf.lite.experimental.Analyzer only prints) and its tensor
    details, so it checks the file as the interpreter will run it.
    """
    interpreter = tf.lite.Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    inputs = {d["index"] for d in interpreter.get_input_details()}
    outputs = {d["index"] for d in interpreter.get_output_details()}
    found = []
    for op in interpreter._get_ops_details():
        ins, outs = [i for i in op["inputs"] if i >= 0], [i for i in op["outputs"] if i >= 0]
        edge = ((op["op_name"] == "QUANTIZE" and set(ins) <= inputs)
                or (op["op_name"] == "DEQUANTIZE" and set(outs) <= outputs))
        if edge:
            continue
        for i in ins + outs:
            dtype = np.dtype(tensors[i]["dtype"])
            if dtype not in (np.int8, np.int32):
                found.append(f"{op['op_name']}: {tensors[i]['name']} ({dtype.name})")
    return found


# ----------------------------------------------------------------------------- data

def images_of(tree, subset: str, size: int, limit: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Up to `limit` (spread over the subset) examples of `subset`, resized to size x size as
    the pipeline evaluates: images (1, size, size, 3) float32, masks (1, size, size) int32."""
    pairs = tree.pairs(subset)
    if not pairs:
        raise DataError(f"the run's data tree {tree.root} has no {subset} images; pass --data-dir where the "
                        f"run's data is")
    if limit and len(pairs) > limit:
        pairs = pairs[:: len(pairs) // limit][:limit]
    ds = pipeline.get_subset_tf_dataset(pairs, 1, 1, input_size=(size, size), classes=tree.classes, cache=False)
    images, masks = [], []
    for x, y in ds:
        images.append(x.numpy())
        masks.append(y.numpy())
    return images, masks


# ----------------------------------------------------------------------------- measurement

def agreement(reference: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Fraction of pixels where two lists of masks predict the same class."""
    same = sum(int((a == b).sum()) for a, b in zip(reference, masks))
    return same / sum(a.size for a in reference)


def predict_masks(model, images: list[np.ndarray]) -> list[np.ndarray]:
    predictor = inference.Predictor(model)
    return [predictor.masks(image) for image in images]


def runtime_latency(path: str | Path, image: np.ndarray, threads: int, warmup: int, runs: int) -> float:
    """Median ms of one call of a .tflite (LiteRT) or .onnx (ONNX Runtime, CPU provider) model
    at batch 1 (input conversion included) after warm-up."""
    model = (onboard.OnnxModel(path, threads, providers=["CPUExecutionProvider"]) if Path(path).suffix == ".onnx"
             else onboard.LiteRTModel(path, threads))
    return _median_ms(lambda: model(image), warmup, runs)


def _median_ms(call, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def tf_latency_here(paths: dict[str, str], size: int, threads: int, warmup: int, runs: int) -> dict[str, float]:
    """Median ms at batch 1 of each Keras / SavedModel path, in this process, whose TensorFlow
    runtime must not have started yet (its thread pools are fixed when it does)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    image = tf.constant(test_pattern(size))
    result = {}
    for name, path in paths.items():
        model = inference.load_model(path)
        call = model._loaded.serve if isinstance(model, inference.SavedModel) else \
            tf.function(lambda x, m=model: m(x, training=False))
        result[name] = _median_ms(lambda: call(image).numpy(), warmup, runs)
    return result


def tf_latency(paths: dict[str, str], size: int, threads: int, warmup: int, runs: int) -> dict[str, float]:
    """tf_latency_here in a fresh Python process (same environment, so the same oneDNN choice)."""
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); from kit import runtime; runtime.start(debug=False); "
            f"from kit import deploy; print(json.dumps(deploy.tf_latency_here({paths!r}, {size}, {threads}, {warmup}, "
            f"{runs})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"timing {list(paths)} with {threads} thread(s) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pattern(size: int) -> np.ndarray:
    """A fixed (1, size, size, 3) float32 image in pipeline.IMAGE_RANGE for timing."""
    return np.random.default_rng(0).uniform(*pipeline.IMAGE_RANGE, (1, size, size, 3)).astype(np.float32)


def size_mb(path: str | Path) -> float:
    """Bytes / 2**20 of a file, or of every file under a folder."""
    path = Path(path)
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return total / 2 ** 20


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """What the latencies were measured on, and with which runtimes: the CPU, its features
    (runtime.KNOWN_FEATURES) and among them its int8 dot-product instructions, which decide
    whether XNNPACK's int8 kernels can beat its float32 ones."""
    return {"cpu": runtime.cpu_model(), "cores": os.cpu_count(), "features": sorted(runtime.cpu_features()),
            "int8_features": runtime.int8_features(),
            "onednn": onednn_enabled(), "tensorflow": tf.__version__, "litert": _version("ai-edge-litert"),
            "onnxruntime": _version("onnxruntime"),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def measure(files: dict[str, str], classes, test: tuple[list, list], size: int, threads: dict[str, int] | None = None,
            warmup: int = 3, runs: int = 20, progress: bool = True, keras_model=None) -> dict[str, dict]:
    """{format: {size_mb, latency_ms: {threads: ms}, mean_iou, pixel_accuracy, agreement}}, and for
    .tflite files `kernels`: which ops LiteRT ran in XNNPACK and which on its builtin kernels
    (onboard.delegated_ops).

    files: {format name: path}, with "keras" among them (the reference for `agreement`);
    keras_model: files["keras"] already loaded, if the caller has it (not loaded again).
    test: (images, masks) from images_of, at `size`. Latency is timed on test_pattern(size).
    Thread settings with the same count are timed once.
    """
    threads = threads or THREADS
    images, labels = test
    counts = sorted(set(threads.values()))
    tf_formats = {n: p for n, p in files.items() if not onboard.runs_without_tensorflow(p)}
    bar = tqdm(total=len(files) * len(images) + len(counts) * (len(files) - len(tf_formats) + bool(tf_formats)),
               desc="measure", unit="step", disable=not progress, leave=False)
    results, reference = {}, None
    for name in ["keras", *(n for n in files if n != "keras")]:
        bar.set_postfix_str(f"{name}: accuracy")
        model = keras_model if name == "keras" and keras_model is not None else inference.load_model(files[name])
        predictor, masks = inference.Predictor(model), []
        cm = metrics.ConfusionMatrix(classes.num_classes)
        for image, label in zip(images, labels):
            masks.append(predictor.masks(image))
            cm.update(label, masks[-1])
            bar.update()
        reference = masks if name == "keras" else reference
        scores = cm.compute()
        results[name] = {"file": str(files[name]), "size_mb": round(size_mb(files[name]), 3),
                         "latency_ms": {}, "mean_iou": scores["mean_iou"],
                         "pixel_accuracy": scores["pixel_accuracy"], "agreement": agreement(reference, masks)}
        if isinstance(model, onboard.LiteRTModel):
            results[name]["kernels"] = model.kernels()
    pattern = test_pattern(size)
    for count in counts:
        keys = [k for k, v in threads.items() if v == count]
        if tf_formats:
            bar.set_postfix_str(f"keras/savedmodel: {count} thread(s), new process")
            for name, ms in tf_latency(tf_formats, size, count, warmup, runs).items():
                results[name]["latency_ms"].update({k: round(ms, 2) for k in keys})
            bar.update()
        for name in (n for n in files if n not in tf_formats):
            bar.set_postfix_str(f"{name}: {count} thread(s)")
            ms = runtime_latency(files[name], pattern, count, warmup, runs)
            results[name]["latency_ms"].update({k: round(ms, 2) for k in keys})
            bar.update()
    bar.close()
    for result in results.values():
        result["latency_ms"] = {k: result["latency_ms"][k] for k in threads}
    return results


def full_int8_verdict(formats: dict[str, dict]) -> dict | None:
    """Whether tflite_full_int8 meets FULL_INT8_TARGET (against Keras and tflite_float32), and
    its speed-up over tflite_float32 per thread setting (float32 ms / full-int8 ms; above 1:
    full int8 is faster), which is reported, not a target."""
    if "tflite_full_int8" not in formats:
        return None
    full = formats["tflite_full_int8"]
    verdict = {"agreement": full["agreement"], "agreement_target": FULL_INT8_TARGET["agreement"]}
    ok = full["agreement"] >= FULL_INT8_TARGET["agreement"]
    if "tflite_float32" in formats:
        float32 = formats["tflite_float32"]
        drop = float32["mean_iou"] - full["mean_iou"]
        verdict.update(mean_iou_drop=drop, mean_iou_drop_target=FULL_INT8_TARGET["mean_iou_drop"])
        ok = ok and drop <= FULL_INT8_TARGET["mean_iou_drop"]
        verdict["speedup_over_float32"] = {k: round(float32["latency_ms"][k] / ms, 2)
                                           for k, ms in full["latency_ms"].items() if ms and k in float32["latency_ms"]}
    verdict["meets_target"] = ok
    return verdict


def kernel_notes(formats: dict[str, dict]) -> str:
    """Which LiteRT kernels ran each .tflite format, in words ("" without .tflite formats):
    the formats XNNPACK ran whole, then each other one's ops left on builtin kernels."""
    whole, split = [], []
    for name, r in formats.items():
        if "kernels" not in r:
            continue
        builtin = r["kernels"]["builtin"]
        if not builtin:
            whole.append(name)
            continue
        total = sum(r["kernels"]["xnnpack"].values()) + sum(builtin.values())
        left = ", ".join(f"{op} x{n}" for op, n in sorted(builtin.items()))
        split.append(f"{name}: {total - sum(builtin.values())} of {total} ops in XNNPACK, {left} on builtin kernels")
    return "; ".join(([f"XNNPACK runs every op of {', '.join(whole)}"] if whole else []) + split)


def markdown(report: dict) -> str:
    """The export report as a Markdown table, with what it was measured on."""
    threads = report["threads"]
    m = report["machine"]
    head = [f"| format | size (MB) | {' | '.join(f'ms, {k} thread(s)' for k in threads)} | mean IoU | "
            f"pixel accuracy | agreement with Keras |",
            "| --- | ---: | " + "---: | " * len(threads) + "---: | ---: | ---: |"]
    rows = []
    for name, r in report["formats"].items():
        latency = " | ".join(f"{r['latency_ms'][k]:.1f}" for k in threads)
        rows.append(f"| {name} | {r['size_mb']:.2f} | {latency} | {r['mean_iou']:.4f} | {r['pixel_accuracy']:.4f} "
                    f"| {100 * r['agreement']:.3f}% |")
    notes = [f"\n{report['size']} px, batch 1, median of {report['latency']['runs']} runs after "
             f"{report['latency']['warmup']} warm-up; 'all' = {threads['all']} threads (equal counts are timed "
             f"once). Scores on "
             f"{report['test_images']} test images at {report['size']} px. Latencies measured on {m['cpu']}, "
             f"{m['cores']} cores, CPU features {', '.join(m['features']) or 'none of those listed'}; int8 "
             f"dot-product instructions: {', '.join(m.get('int8_features') or []) or 'none'}; "
             f"oneDNN {'on' if m['onednn'] else 'off'}, "
             f"TensorFlow {m['tensorflow']}, LiteRT {m.get('litert')} (.tflite), ONNX Runtime {m.get('onnxruntime')} "
             f"(.onnx, CPU provider)"
             + (f"; load average {m['load_average'][0]} when measured." if m.get("load_average") else ".")]
    kernels = kernel_notes(report["formats"])
    if kernels:
        notes.append(f"LiteRT kernels: {kernels}.")
    check = report.get("full_int8")
    if check:
        ops = check["float_ops"]
        target = f"agreement >= {check['agreement_target']:.0%}"
        if "mean_iou_drop" in check:
            target += f", mean IoU within {check['mean_iou_drop_target']} of tflite_float32"
        io = "int8" if report["int8_io"] else "float32, quantized at the edges"
        integer = "integer-only between its edges" if not ops else f"float tensors: {ops[:5]}"
        speed = check.get("speedup_over_float32")
        speed = ("; speed over tflite_float32 (its ms / these): "
                 + ", ".join(f"{x:.2f}x with {k} thread(s)" for k, x in speed.items()) if speed else "")
        notes.append(f"tflite_full_int8: {integer} (interpreter op details); calibrated on {report['calibration_images']} training images; "
                     f"input/output {io}; target ({target}) {'met' if check['meets_target'] else 'NOT met'}{speed}.")
    onnx = report.get("onnx")
    if onnx:
        shape = ", ".join("N" if d is None else str(d) for d in onnx["input"]["shape"])
        notes.append(f"onnx: opset {onnx['opset']}, written by {onnx['producer']}; input {onnx['input']['name']} "
                     f"({shape}) float32.")
    return "\n".join(head + rows) + "\n" + "\n".join(notes) + "\n"
