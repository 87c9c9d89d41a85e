"""How training cost grows: time per training image against input size, peak memory against batch.

    python bench/bench_scaling.py [--sizes 128,192,256,384,512] [--batches 1,2,4,8]

Time per training image (batch 2, float32, the same step as bench_train.py) at each size, and the exponent k of a fit
time ~ size^k (k = 2 means cost proportional to pixels). Peak resident memory of a training
step at 256 px for each batch size (VmHWM, Linux only), each measured in a fresh process, and
its growth per image. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import emit, machine

from kit import runtime

runtime.prefer_onednn()  # measure what train.py runs: it asks for oneDNN before TensorFlow loads

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent


def _child(size: int, batch: int, steps: int) -> None:
    """In a fresh process: seconds per training image and peak resident memory, as JSON.

    Peak memory is VmHWM: Linux carries ru_maxrss across exec, so a child of a large parent
    would report the parent's peak.
    """
    from bench_train import train_rate
    from model import build_deeplabv3

    rate = train_rate(build_deeplabv3((size, size, 3), backbone_weights=None), size, batch, steps)
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"seconds_per_image": 1 / rate, "peak_rss_mib": int(hwm.split()[1]) / 1024}))


def _run_child(size: int, batch: int, steps: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(size), str(batch), "--steps", str(steps)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128,192,256,384,512")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--memory-size", type=int, default=256, help="input size of the memory runs")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--child", nargs=2, type=int, metavar=("SIZE", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(args):
    if args.child:
        _child(*args.child, args.steps)
        return
    # Every measurement in its own process: one after another in one process, later models
    # ran slower here.
    sizes = [int(s) for s in args.sizes.split(",")]
    per_image = {s: _run_child(s, 2, args.steps)["seconds_per_image"] for s in sizes}
    k = float(np.polyfit(np.log(sizes), np.log([per_image[s] for s in sizes]), 1)[0])
    batches = [int(b) for b in args.batches.split(",")]
    memory = {b: _run_child(args.memory_size, b, 1)["peak_rss_mib"] for b in batches}
    slope = float(np.polyfit(batches, [memory[b] for b in batches], 1)[0])
    emit({"benchmark": "scaling", "machine": machine(),
          "seconds_per_training_image_batch2": {str(s): round(t, 3) for s, t in per_image.items()},
          "time_exponent_in_size": round(k, 2),
          f"peak_rss_mib_at_{args.memory_size}px": {str(b): round(m) for b, m in memory.items()},
          "peak_rss_mib_per_extra_image": round(slope, 1)}, args.out)


if __name__ == "__main__":
    main(parse_args())
