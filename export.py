"""Export a trained model for the vehicle: SavedModel and TFLite (float32, float16, int8), checked.

    python export.py --run-dir eval/deeplabv3 --size 384      # best.keras -> eval/deeplabv3/export/

Writes `saved_model/` (any input size) and `model_float32.tflite`, `model_float16.tflite`,
`model_int8.tflite` (dynamic-range int8 weights) for a fixed (1, size, size, 3) input, and
`classes.json` (the class table, which predict.py reads), then runs Keras and every export on
the run's own test images (its config.json; nothing is downloaded or generated) and reports
the fraction of pixels whose predicted class agrees (`parity.json`). float32 and float16 must agree on at least 99.9% of
pixels, or the command fails; int8 is reported.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import runtime

runtime.start()  # before TensorFlow loads: a quiet start-up unless --debug (see runtime.py)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import atomic  # noqa: E402
import cli  # noqa: E402
import config  # noqa: E402
import data  # noqa: E402
import pipeline  # noqa: E402
import prediction  # noqa: E402

TFLITE_KINDS = ("float32", "float16", "int8")
PARITY_FLOOR = 0.999  # float32 and float16


def write_serving_archive(model, path: str | Path, size: int | None = None) -> None:
    """A SavedModel at `path` whose `serve(image)` returns the model's logits.

    Input (1, size, size, 3) float32, or (None, None, None, 3) when `size` is None. Inference
    only: the gradient functions of custom-gradient layers (the portable dilated conv) are
    not traced into it, which also keeps a ResNet-50 export about 15 s shorter here.
    """
    shape = (1, size, size, 3) if size else (None, None, None, 3)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    archive.write_out(str(path), options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
                      verbose=False)


def tflite_bytes(model, size: int, kind: str) -> bytes:
    """Convert `model` for a (1, size, size, 3) float32 input; kind is float32, float16 or int8.

    Goes through a fixed-shape SavedModel: converting a concrete function of a Keras 3 model
    directly dropped its weights here (a 0.2 MB file predicting garbage).
    """
    with tempfile.TemporaryDirectory() as tmp:
        write_serving_archive(model, tmp, size)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if kind in ("float16", "int8"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # without a dataset: dynamic-range int8
        if kind == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def export_saved_model(model, path: Path) -> None:
    """A TensorFlow SavedModel whose serving signature takes any image size, written into a
    temporary folder and swapped into place when complete."""
    with atomic.folder(path, replace=True) as tmp:
        write_serving_archive(model, tmp)


def parity(reference: prediction.Predictor, candidate: prediction.Predictor, images: list[np.ndarray]) -> float:
    """Fraction of pixels where both predict the same class."""
    same = total = 0
    for image in images:
        a, b = reference.masks(image[None]), candidate.masks(image[None])
        same += int((a == b).sum())
        total += a.size
    return same / total


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=config.TRAIN["run_dir"].default,
                   help="the training run: its best.keras, data and classes")
    p.add_argument("--model", help="a .keras model (default RUN_DIR/best.keras)")
    p.add_argument("--out-dir", help="default: an export/ folder beside the model")
    p.add_argument("--size", type=int, default=384, help="square input size of the TFLite models")
    p.add_argument("--formats", default="savedmodel," + ",".join(TFLITE_KINDS),
                   help="comma-separated: savedmodel, float32, float16, int8")
    p.add_argument("--data-dir", help="where the run's data tree is now, if it moved (default: the run's)")
    p.add_argument("--parity-images", type=int, default=20, help="test images for the parity check")
    cli.add_debug_flag(p)
    return p.parse_args(argv)


def main(args) -> dict:
    run_dir = Path(args.run_dir)
    model_path = Path(args.model or run_dir / "best.keras")
    out = Path(args.out_dir or model_path.parent / "export")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = set(formats) - {"savedmodel", *TFLITE_KINDS}
    if unknown:
        raise config.ConfigError(f"unknown formats {sorted(unknown)}; choose from savedmodel, {', '.join(TFLITE_KINDS)}")
    saved = config.load_run_config(run_dir)
    stride = saved.get("output_stride", config.TRAIN["output_stride"].default)
    if args.size <= 0 or args.size % stride:
        raise config.ConfigError(f"--size {args.size}: the export size must be a positive multiple of the model's "
                                 f"output stride {stride}, e.g. {max(stride, args.size // stride * stride)}")
    tree = data.tree_from_config(saved, args.data_dir)
    model = prediction.load_model(model_path)
    prediction.check_classes(model, tree.classes, model_path)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / prediction.CLASSES_FILE, json.dumps(tree.classes.to_json(), indent=2))
    report = {"model": str(model_path), "size": args.size, "files": {}, "argmax_agreement": {}}
    if "savedmodel" in formats:
        export_saved_model(model, out / "saved_model")
        report["files"]["savedmodel"] = str(out / "saved_model")
    for kind in (k for k in TFLITE_KINDS if k in formats):
        path = out / f"model_{kind}.tflite"
        atomic.write_bytes(path, tflite_bytes(model, args.size, kind))
        report["files"][kind] = str(path)
        report[f"{kind}_megabytes"] = round(path.stat().st_size / 2 ** 20, 2)

    # Parity on the run's test images, all at the export size, so Keras sees what TFLite sees.
    pairs = tree.pairs("test")[: args.parity_images]
    ds = pipeline.get_subset_tf_dataset(pairs, 1, 1, input_size=(args.size, args.size), classes=tree.classes)
    images = [x[0].numpy() for x, _ in ds]
    keras_predictor = prediction.Predictor(model)
    for kind in (k for k in TFLITE_KINDS if k in formats):
        agreement = parity(keras_predictor, prediction.Predictor(prediction.load_model(report["files"][kind])), images)
        report["argmax_agreement"][kind] = agreement
    if "savedmodel" in formats:
        served = prediction.load_model(out / "saved_model")
        report["argmax_agreement"]["savedmodel"] = parity(keras_predictor, prediction.Predictor(served), images)
    report["parity_images"] = len(images)
    atomic.write_text(out / "parity.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    failing = {k: v for k, v in report["argmax_agreement"].items() if k != "int8" and v < PARITY_FLOOR}
    if failing:
        raise SystemExit(f"error: exports disagree with Keras on more than {1 - PARITY_FLOOR:.1%} of pixels: {failing}")
    return report


if __name__ == "__main__":
    cli.run(main, parse_args)
