"""TFLite float32 against full int8, side by side, with the CPU features that decide between them.

    python bench/bench_tflite.py [--models mobilenetv2:128,resnet50:384] [--threads 1,2] [--rounds 7]
                                 [--runtimes litert,tensorflow,builtin] [--out tflite.json]

For each model (backbone:size; mobilenetv2 is the demo preset's, ASPP 64; random weights and
random calibration images: speed does not depend on them) it writes model_float32.tflite and
model_full_int8.tflite as export.py does (deploy.tflite_files, float32 input and output), then
times one image at batch 1 through each runtime, at each thread count:

- litert: onboard.LiteRTModel, as export.py --report and the car run a file (LiteRT's default
  op resolver, so XNNPACK, and the input and output conversions included);
- tensorflow: TensorFlow's own tf.lite.Interpreter (set_tensor, invoke, get_tensor);
- builtin: LiteRT without its default delegate (BUILTIN_WITHOUT_DEFAULT_DELEGATES): TFLite's
  own kernels, to show what XNNPACK is worth for each type.

Rounds interleave every file and runtime, so a slow spell of a shared machine hits them alike;
a round times `--runs` calls of each after `--warmup` untimed ones, and medians over rounds
are reported with the ratio float32 ms / full-int8 ms (above 1: full int8 is faster). Also
reported: which ops XNNPACK runs in each file (onboard.delegated_ops), the CPU, its features
and int8 dot-product instructions (kit/runtime.py), and the load average before and after.
Prints JSON and a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import emit, machine

import numpy as np

from kit import deploy
from kit import onboard
from kit import runtime
from model import build_deeplabv3

KINDS = ("float32", "full_int8")
RUNTIMES = ("litert", "tensorflow", "builtin")


def export(folder: Path, backbone: str, size: int, calibration_images: int) -> dict[str, Path]:
    """model_float32.tflite and model_full_int8.tflite of a random-weight model at `size`."""
    extra = {"aspp_filters": 64} if backbone == "mobilenetv2" else {}
    model = build_deeplabv3((None, None, 3), backbone=backbone, backbone_weights=None, **extra)
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32) for _ in range(calibration_images)]
    files = {}
    for kind, flat in deploy.tflite_files(model, size, KINDS, calibration):
        files[kind] = folder / f"{backbone}_{size}_{kind}.tflite"
        files[kind].write_bytes(flat)
    return files


def caller(path: Path, runtime_name: str, threads: int, image: np.ndarray):
    """A no-argument function running one image through `path` under `runtime_name`."""
    if runtime_name == "litert":
        model = onboard.LiteRTModel(path, threads)
        return lambda: model(image)
    if runtime_name == "tensorflow":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
    else:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def call():
        interpreter.set_tensor(source, image)  # both files take float32 (quantized inside the int8 one)
        interpreter.invoke()
        return interpreter.get_tensor(target)

    return call


def time_turns(calls: dict, rounds: int, runs: int, warmup: int) -> dict[str, float]:
    """Median over `rounds` of the mean ms per call of each function, the functions taking turns."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(runs):
                call()
            times[name].append(1000 * (time.perf_counter() - start) / runs)
    return {name: statistics.median(t) for name, t in times.items()}


def main(args) -> dict:
    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise SystemExit(f"unknown runtimes {sorted(unknown)}; choose from {', '.join(RUNTIMES)}")
    threads = [int(t) for t in args.threads.split(",")]
    report = {"benchmark": "tflite float32 vs full int8", "machine": machine(),
              "int8_features": runtime.int8_features(), "load_average": {"before": os.getloadavg()},
              "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            backbone, size = spec.split(":")
            size = int(size)
            files = export(Path(tmp), backbone, size, args.calibration_images)
            image = deploy.test_pattern(size)
            entry = {"size": size, "megabytes": {k: round(p.stat().st_size / 2 ** 20, 2) for k, p in files.items()},
                     "kernels": {k: onboard.LiteRTModel(p, 1).kernels() for k, p in files.items()}, "ms": {}}
            for count in threads:
                calls = {(r, k): caller(files[k], r, count, image) for r in runtimes for k in KINDS}
                ms = time_turns(calls, args.rounds, args.runs, args.warmup)
                for r in runtimes:
                    row = {k: round(ms[(r, k)], 3) for k in KINDS}
                    row["speedup_int8"] = round(row["float32"] / row["full_int8"], 2)
                    entry["ms"].setdefault(r, {})[str(count)] = row
                print(f"{spec}, {count} thread(s): {entry['ms']}", flush=True)
            report["models"][spec] = entry
    report["load_average"]["after"] = os.getloadavg()
    emit(report, args.out)
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = ["| model | runtime | threads | float32 ms | full int8 ms | int8 speed-up | ops not in XNNPACK |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for spec, entry in report["models"].items():
        left = "; ".join(f"{k}: " + (", ".join(f"{op} x{n}" for op, n in v["builtin"].items()) or "none")
                         for k, v in entry["kernels"].items())
        for name, rows in entry["ms"].items():
            for count, row in rows.items():
                lines.append(f"| {spec} | {name} | {count} | {row['float32']:.2f} | {row['full_int8']:.2f} | "
                             f"{row['speedup_int8']:.2f}x | {left if name != 'builtin' else 'all (no delegate)'} |")
    m = report["machine"]
    lines.append(f"\nMedians of {report['rounds']} rounds of {report['runs']} calls; {m['cpu']}, {m['cores']} cores; "
                 f"CPU features {', '.join(m['cpu_features'])}; int8 dot-product instructions: "
                 f"{', '.join(report['int8_features']) or 'none'}; load average "
                 f"{report['load_average']['before'][0]:.2f} before, {report['load_average']['after'][0]:.2f} after.")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mobilenetv2:128", help="comma-separated backbone:size, e.g. "
                   "mobilenetv2:128,resnet50:384")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--runtimes", default="litert,tensorflow", help=f"comma-separated, of {', '.join(RUNTIMES)}")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the median is reported)")
    p.add_argument("--runs", type=int, default=20, help="timed calls of each file per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls of each file first")
    p.add_argument("--calibration-images", type=int, default=8, help="random images calibrating the int8 file")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
