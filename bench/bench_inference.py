"""Inference speed: the Keras model, predict.py end to end, and the exported formats.

    python bench/bench_inference.py [--sizes 384,256] [--backbone resnet50]

For each size: images/s and latency per image of the bare Keras forward pass (tf.function,
batch 1 and 8), of predict.py's per-file loop (read JPEG, predict, write PNG mask and
overlay; batch 1) and of each TFLite export (batch 1; fixed input). Random weights: speed
does not depend on them. Prints JSON.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import emit, machine

import numpy as np
import tensorflow as tf
from PIL import Image

from kit import deploy
import predict
from kit import inference
from kit import onboard
from model import build_deeplabv3


def _timed(*fns, repeats: int, rounds: int = 3) -> list[float]:
    """Best-of-`rounds` mean seconds per call of each function over `repeats` calls.

    One warm-up call each; the functions take turns within every round, so a slow spell on a
    shared machine hits them alike rather than skewing one ratio.
    """
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            best[i] = min(best[i], (time.perf_counter() - start) / repeats)
    return best


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="384,256")
    p.add_argument("--backbone", default="resnet50", choices=("resnet50", "mobilenetv2"))
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (best of 3 rounds)")
    p.add_argument("--formats", default="float32,float16,int8", help="TFLite exports to time ('' for none; "
                   "full_int8 too; bench_tflite.py compares float32 and full_int8 in turns)")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(args):
    result = {"benchmark": "inference", "machine": machine(), "backbone": args.backbone, "runs": []}
    for size in (int(s) for s in args.sizes.split(",")):
        model = build_deeplabv3((None, None, 3), backbone_weights=None, backbone=args.backbone)
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        rng = np.random.default_rng(0)
        row = {"size": size}
        x8 = tf.constant(rng.uniform(0, 255, (8, size, size, 3)).astype("float32"))
        (seconds,) = _timed(lambda: forward(x8).numpy(), repeats=args.repeats)
        row["keras_batch8"] = {"images_per_s": round(8 / seconds, 2), "latency_ms_per_image": round(1000 * seconds / 8, 1)}
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            files = []
            for i in range(args.repeats):
                path = tmp / f"img{i}.jpg"
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
                files.append(path)
            predictor = inference.Predictor(model)
            x1 = tf.constant(rng.uniform(0, 255, (1, size, size, 3)).astype("float32"))
            # Keras batch 1 and predict.py's loop (len(files) images per call), timed in turns.
            bare, loop = _timed(lambda: [forward(x1).numpy() for _ in files],
                                lambda: predict.predict_files(predictor, files, tmp / "out"), repeats=1)
            bare, loop = bare / len(files), loop / len(files)
            row["keras_batch1"] = {"images_per_s": round(1 / bare, 2), "latency_ms_per_image": round(1000 * bare, 1)}
            row["predict_py_batch1"] = {"images_per_s": round(1 / loop, 2), "latency_ms_per_image": round(1000 * loop, 1),
                                        "fraction_of_keras_batch1": round(bare / loop, 3)}
            for kind in (k for k in args.formats.split(",") if k):
                path = tmp / f"m_{kind}.tflite"
                # full_int8 is calibrated on random images: its speed does not depend on the ranges.
                calibration = [rng.uniform(0, 255, (1, size, size, 3)).astype("float32") for _ in range(8)]
                path.write_bytes(deploy.tflite_bytes(model, size, kind, calibration if kind == "full_int8" else None))
                lite = onboard.LiteRTModel(path)
                (seconds,) = _timed(lambda: lite(x1.numpy()), repeats=args.repeats)
                row[f"tflite_{kind}_batch1"] = {"images_per_s": round(1 / seconds, 2),
                                                "latency_ms_per_image": round(1000 * seconds, 1),
                                                "megabytes": round(path.stat().st_size / 2 ** 20, 1)}
        print(row, flush=True)
        result["runs"].append(row)
    emit(result, args.out)


if __name__ == "__main__":
    main(parse_args())
