"""Export a trained model for the vehicle: SavedModel, TFLite (float32, float16, int8) and ONNX, checked.

    python export.py --run-dir eval/deeplabv3                 # best.keras -> eval/deeplabv3/export/
    python export.py --run-dir eval/demo --report             # ... and which file goes on the car
    python export.py --run-dir eval/demo --formats onnx       # only model.onnx (and classes.json)

Writes `saved_model/` (any input size) and, for a fixed (1, size, size, 3) input (`--size`,
default the run's input size), `model_float32.tflite`, `model_float16.tflite`,
`model_int8.tflite` (dynamic-range: int8 weights), `model_full_int8.tflite` (int8 weights and
activations, calibrated on the run's training images; `--int8-io` for int8 input and output),
`model.onnx` ((N, size, size, 3) input, any batch N, ONNX opset 17, through Keras' exporter and
tf2onnx), and `classes.json` (the class table, which predict.py reads). The .tflite and .onnx
files run without TensorFlow (predict.py, kit/onboard.py). Then it runs Keras and every
export on the run's own test images (its config.json; nothing is downloaded or generated) and
writes the fraction of pixels whose predicted class agrees (`parity.json`): the SavedModel,
float32, float16 and ONNX must agree on at least 99.9% of pixels, or the command fails; the
int8 files are reported. The TFLite files are run under LiteRT and the ONNX file under ONNX
Runtime, as on the vehicle.

--report measures every format (kit/deploy.py: size, latency at 1, 2 and all threads, mean IoU and
pixel accuracy on the whole test split, agreement with Keras, and for .tflite files which ops
XNNPACK ran) into `export_report.json` and `export_report.md` and prints the table, with the
CPU and CPU features (int8 dot-product instructions among them) the latencies came from.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from kit import runtime

runtime.start()  # before TensorFlow loads: a quiet start-up unless --debug (see kit/runtime.py)

from kit import atomic  # noqa: E402
from kit import cli  # noqa: E402
from kit import config  # noqa: E402
from kit import data  # noqa: E402
from kit import deploy  # noqa: E402
from kit import inference  # noqa: E402

DEFAULT_FORMATS = "savedmodel,float32,float16,int8,full_int8,onnx"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=config.TRAIN["run_dir"].default,
                   help="the training run: its best.keras, data and classes")
    p.add_argument("--model", help="a .keras model (default RUN_DIR/best.keras)")
    p.add_argument("--out-dir", help="default: an export/ folder beside the model")
    p.add_argument("--size", type=int, help="square input size of the TFLite and ONNX models (default: the run's "
                   "input size)")
    p.add_argument("--formats", default=DEFAULT_FORMATS,
                   help="comma-separated, or all: savedmodel, float32 (tflite_float32), float16 (tflite_float16), "
                        "int8 (tflite_dynamic_int8), full_int8 (tflite_full_int8), onnx; keras is always the reference")
    p.add_argument("--int8-io", action="store_true", help="the full-int8 model takes and returns int8 tensors")
    p.add_argument("--calibration-images", type=cli.whole_number(1), default=100,
                   help="training images that calibrate the full-int8 model's activation ranges")
    p.add_argument("--data-dir", help="where the run's data tree is now, if it moved (default: the run's)")
    p.add_argument("--parity-images", type=cli.whole_number(1), default=20, help="test images for the parity check (without --report)")
    p.add_argument("--report", action="store_true",
                   help="measure every format on the whole test split: export_report.json and .md")
    p.add_argument("--report-images", type=cli.whole_number(1), help="with --report: at most this many test images (default all)")
    p.add_argument("--latency-runs", type=cli.whole_number(1), default=20, help="with --report: timed runs per format and thread count")
    p.add_argument("--warmup-runs", type=cli.whole_number(0), default=3, help="with --report: untimed runs first")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_flag(p)
    return p.parse_args(argv)


def main(args) -> dict:
    run_dir = Path(args.run_dir)
    model_path = Path(args.model or run_dir / config.RUN_BEST_MODEL)
    out = Path(args.out_dir or model_path.parent / "export")
    formats = [f for f in deploy.resolve_formats(args.formats) if f != "keras"]
    if args.int8_io and "tflite_full_int8" not in formats:
        raise config.ConfigError("--int8-io applies to the full-int8 model: add full_int8 to --formats")
    if "onnx" in formats:
        deploy.check_onnx_converter()  # before anything is loaded or written
    saved = config.load_run_config(run_dir)
    size = args.size if args.size is not None else saved.get("input_size", config.TRAIN["input_size"].default)
    stride = saved.get("output_stride", config.TRAIN["output_stride"].default)
    if size <= 0 or size % stride:
        raise config.ConfigError(f"--size {size}: the export size must be a positive multiple of the model's "
                                 f"output stride {stride}, e.g. {max(stride, size // stride * stride)}")
    tree = data.tree_from_config(saved, args.data_dir)
    tree.check_split(saved.get("splits"), "test")  # the report scores the run's own held-out split
    test = deploy.images_of(tree, "test", size, args.report_images if args.report else args.parity_images)
    calibration = None
    if "tflite_full_int8" in formats:
        calibration = deploy.images_of(tree, "train", size, args.calibration_images)[0]
    model = inference.load_model(model_path)
    inference.check_classes(model, tree.classes, model_path)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / inference.CLASSES_FILE, json.dumps(tree.classes.to_json(), indent=2))

    files = {"keras": str(model_path), **{name: str(out / deploy.FORMATS[name].file) for name in formats}}
    # Files an earlier export left here for formats not asked for now, and an earlier report,
    # would describe another model (or another size) beside this one's: remove them.
    stale = [out / f.file for name, f in deploy.FORMATS.items() if f.file and name not in formats]
    stale += [out / name for name in ("export_report.json", "export_report.md")]
    for path in (p for p in stale if p.exists()):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"removed {path} (from an earlier export)")
    if "savedmodel" in formats:
        deploy.export_saved_model(model, Path(files["savedmodel"]))
    lite = {deploy.FORMATS[name].tflite: name for name in formats if deploy.FORMATS[name].tflite}
    for kind, flat in deploy.tflite_files(model, size, list(lite), calibration, args.int8_io):
        atomic.write_bytes(files[lite[kind]], flat)
    float_ops = deploy.float_ops(files["tflite_full_int8"]) if "tflite_full_int8" in files else None
    if "onnx" in formats:
        deploy.export_onnx(model, files["onnx"], size)

    if args.report:
        measured = deploy.measure(files, tree.classes, test, size, warmup=args.warmup_runs, runs=args.latency_runs,
                                  progress=not args.no_progress, keras_model=model)
        agreements = {name: r["agreement"] for name, r in measured.items()}
    else:
        keras_masks = deploy.predict_masks(model, test[0])
        agreements = {name: deploy.agreement(keras_masks, deploy.predict_masks(inference.load_model(path), test[0]))
                      for name, path in files.items() if name != "keras"}

    # parity.json keeps the short names it has always had (float32, float16, int8, savedmodel).
    parity = {"model": str(model_path), "size": size, "parity_images": len(test[0]),
              "files": {deploy.FORMATS[n].short: p for n, p in files.items() if n != "keras"},
              "argmax_agreement": {deploy.FORMATS[n].short: a for n, a in agreements.items() if n != "keras"}}
    for name in (n for n in formats if n != "savedmodel"):
        parity[f"{deploy.FORMATS[name].short}_megabytes"] = round(deploy.size_mb(files[name]), 2)
    onnx = deploy.onnx_facts(files["onnx"]) if "onnx" in formats else None
    if onnx:
        parity["onnx_opset"] = onnx["opset"]
    if float_ops is not None:
        parity["full_int8_float_ops"] = float_ops
    atomic.write_text(out / "parity.json", json.dumps(parity, indent=2) + "\n")
    result = parity
    if args.report:
        result = {"model": str(model_path), "size": size, "test_images": len(test[0]),
                  "calibration_images": len(calibration) if calibration else 0, "int8_io": args.int8_io,
                  "threads": deploy.THREADS, "latency": {"batch": 1, "statistic": "median", "warmup": args.warmup_runs,
                                                         "runs": args.latency_runs},
                  "machine": deploy.machine(), "formats": measured}
        if onnx:
            result["onnx"] = onnx
        verdict = deploy.full_int8_verdict(measured)
        if verdict is not None:
            result["full_int8"] = {**verdict, "float_ops": float_ops,
                                   "checked_with": "tf.lite.Interpreter._get_ops_details() and get_tensor_details()"}
        table = deploy.markdown(result)
        atomic.write_text(out / "export_report.json", json.dumps(result, indent=2) + "\n")
        atomic.write_text(out / "export_report.md", table)
        result["argmax_agreement"] = parity["argmax_agreement"]
        print(table)
    else:
        print(json.dumps(parity, indent=2))
    failing = {deploy.FORMATS[n].short: a for n, a in agreements.items()
               if n in deploy.GATED and a < deploy.PARITY_FLOOR}
    if failing:
        raise deploy.ExportError(f"exports disagree with Keras on more than {1 - deploy.PARITY_FLOOR:.1%} of "
                                 f"pixels: {failing}")
    if float_ops:
        raise deploy.ExportError(f"{files['tflite_full_int8']} is not integer-only: {float_ops[:5]}")
    return result


if __name__ == "__main__":
    cli.run(main, parse_args)
