"""Export a trained model for the vehicle: SavedModel and TFLite (float32, float16, int8), checked.

    python export.py --model eval/deeplabv3/best.keras --size 384 --out-dir eval/deeplabv3/export

Writes `saved_model/` (any input size) and `model_float32.tflite`, `model_float16.tflite`,
`model_int8.tflite` (dynamic-range int8 weights) for a fixed (1, size, size, 3) input, then
runs Keras and every export on real test images and reports the fraction of pixels whose
predicted class agrees (`parity.json`). float32 and float16 must agree on at least 99.9% of
pixels, or the command fails; int8 is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import download_data
import pipeline
import prediction
import training

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
    """A TensorFlow SavedModel whose serving signature takes any image size.

    Written into a temporary sibling folder and renamed into place when complete.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_serving_archive(model, tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    p.add_argument("--model", required=True, help="a .keras model from train.py")
    p.add_argument("--out-dir", help="default: an export/ folder beside the model")
    p.add_argument("--size", type=int, default=384, help="square input size of the TFLite models")
    p.add_argument("--formats", default="savedmodel," + ",".join(TFLITE_KINDS),
                   help="comma-separated: savedmodel, float32, float16, int8")
    p.add_argument("--dataset", choices=("voc", "synthetic"), default="voc", help="where the parity images come from")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--parity-images", type=int, default=20, help="test images for the parity check")
    return p.parse_args(argv)


def main(args) -> dict:
    model_path = Path(args.model)
    out = Path(args.out_dir or model_path.parent / "export")
    out.mkdir(parents=True, exist_ok=True)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = set(formats) - {"savedmodel", *TFLITE_KINDS}
    if unknown:
        raise SystemExit(f"error: unknown formats {sorted(unknown)}")
    model = prediction.load_model(model_path)
    report = {"model": str(model_path), "size": args.size, "files": {}, "argmax_agreement": {}}
    if "savedmodel" in formats:
        export_saved_model(model, out / "saved_model")
        report["files"]["savedmodel"] = str(out / "saved_model")
    for kind in (k for k in TFLITE_KINDS if k in formats):
        path = out / f"model_{kind}.tflite"
        training.atomic_write_bytes(path, tflite_bytes(model, args.size, kind))
        report["files"][kind] = str(path)
        report[f"{kind}_megabytes"] = round(path.stat().st_size / 2 ** 20, 2)

    # Parity on real test images, all at the export size, so Keras sees what TFLite sees.
    voc_root = download_data.dataset_root(args.dataset, args.data_dir, progress=False)
    ds = pipeline.voc_dataset(voc_root, "test", 1, input_size=(args.size, args.size))
    images = [x[0].numpy() for x, _ in ds.take(args.parity_images)]
    keras_predictor = prediction.Predictor(model)
    for kind in (k for k in TFLITE_KINDS if k in formats):
        agreement = parity(keras_predictor, prediction.Predictor(prediction.load_model(report["files"][kind])), images)
        report["argmax_agreement"][kind] = agreement
    if "savedmodel" in formats:
        served = prediction.load_model(out / "saved_model")
        report["argmax_agreement"]["savedmodel"] = parity(keras_predictor, prediction.Predictor(served), images)
    report["parity_images"] = len(images)
    (out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    failing = {k: v for k, v in report["argmax_agreement"].items() if k != "int8" and v < PARITY_FLOOR}
    if failing:
        raise SystemExit(f"error: exports disagree with Keras on more than {1 - PARITY_FLOOR:.1%} of pixels: {failing}")
    return report


if __name__ == "__main__":
    main(parse_args())
