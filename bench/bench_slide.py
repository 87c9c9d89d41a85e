"""Peak memory and time of inference on a large photo: whole image against sliding windows.

    python bench/bench_slide.py [--slide-size 6000x4000] [--whole-size 3000x2000]

Each measurement runs in a fresh process (peak resident memory is VmHWM, Linux only): the
ResNet-50 DeepLab v3 (random weights; memory does not depend on them) predicts one random
image through inference.Predictor, as evaluate.py and predict.py do, with mode "slide"
(513 px windows every 341 px) and with mode "whole". The whole-image run is at a smaller size
by default, because at 6000x4000 it needs about 10 GB. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import emit, machine


def _child(mode: str, width: int, height: int) -> None:
    import numpy as np

    from kit import inference
    from model import build_deeplabv3

    model = build_deeplabv3((None, None, 3), backbone_weights=None)
    predictor = inference.Predictor(model, mode=mode)
    image = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype("float32")
    start = time.perf_counter()
    mask = predictor.masks(image)
    seconds = time.perf_counter() - start
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"mode": mode, "size": f"{width}x{height}", "mask_shape": list(mask.shape),
                      "seconds": round(seconds, 1), "peak_rss_gib": round(int(hwm.split()[1]) / 2 ** 20, 2)}))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide-size", default="6000x4000", help="WIDTHxHEIGHT of the sliding-window run")
    p.add_argument("--whole-size", default="3000x2000", help="WIDTHxHEIGHT of the whole-image run ('' for none)")
    p.add_argument("--child", nargs=3, metavar=("MODE", "WIDTH", "HEIGHT"), help=argparse.SUPPRESS)
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(args):
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    runs = []
    for mode, size in (("slide", args.slide_size), ("whole", args.whole_size)):
        if not size:
            continue
        width, height = size.lower().split("x")
        done = subprocess.run([sys.executable, __file__, "--child", mode, width, height], capture_output=True,
                              text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    emit({"benchmark": "large-image inference memory", "machine": machine(), "runs": runs}, args.out)


if __name__ == "__main__":
    main(parse_args())
