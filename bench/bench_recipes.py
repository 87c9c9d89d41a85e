"""Training recipes (and class weightings) compared on the demo's synthetic data, same step budget.

    python bench/bench_recipes.py                                   # chapter vs deeplabv3 presets
    python bench/bench_recipes.py --class-weights image,batch,dataset,none   # the chapter recipe, each weighting
    python bench/bench_recipes.py --iterations 375 --seeds 0,1

Each run is `python train.py --demo` (synthetic data, MobileNetV2, 128 px crops, batch 8) in a
fresh process and run directory, with `--recipe R` and `--iterations N` so every recipe takes
the same number of optimizer steps. Reports the best and last validation mean IoU, the test
mean IoU of best.keras (evaluate.py at input resolution) and training images/s (epoch time,
validation included). Synthetic data only: it says how the recipes behave on a small problem,
not what they reach on VOC. Prints JSON and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, emit


def run(name: str, extra: list[str], data_dir: Path, work: Path, iterations: int, seed: int) -> dict:
    """Train one configuration with train.py and score it with evaluate.py, each in its own process."""
    run_dir = work / f"{name}-seed{seed}"
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--demo", "--data-dir", str(data_dir), "--run-dir",
                    str(run_dir), "--iterations", str(iterations), "--seed", str(seed), "--verbose", "0", *extra],
                   check=True, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    log = json.loads((run_dir / "state" / "state.json").read_text())["history"]
    settings = json.loads((run_dir / "config.json").read_text())
    subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--run-dir", str(run_dir), "--resolution", "input",
                    "--num-figures", "0"], check=True, capture_output=True, text=True, cwd=ROOT)
    test = json.loads((run_dir / "metrics.json").read_text())
    images = iterations * settings["batch_size"]
    return {"name": name, "seed": seed, "args": extra, "optimizer": settings["optimizer"],
            "schedule": settings["schedule"], "lr": settings["lr"], "class_weights": settings["class_weights"],
            "steps": iterations, "epochs": len(log),
            "best_val_mean_iou": round(max(r["val_mean_iou"] for r in log), 4),
            "last_val_mean_iou": round(log[-1]["val_mean_iou"], 4), "test_mean_iou": round(test["mean_iou"], 4),
            "train_images_per_s": round(images / sum(r["seconds"] for r in log), 2), "wall_s": round(wall, 1)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="chapter,deeplabv3", help="comma-separated --recipe values")
    p.add_argument("--class-weights", default="", help="instead: the chapter recipe with each of these weightings")
    p.add_argument("--iterations", type=int, default=375, help="optimizer steps per run (the demo's 15 x 25)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each configuration runs once per seed")
    p.add_argument("--data-dir", help="synthetic data folder (default: a temporary one)")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(args):
    import download_data
    from common import machine

    if args.class_weights:
        configs = [(f"chapter/{w}", ["--recipe", "chapter", "--class-weights", w]) for w in args.class_weights.split(",")]
    else:
        configs = [(r, ["--recipe", r]) for r in args.recipes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir or Path(tmp) / "data")
        download_data.ensure_synthetic(data_dir, 200, 100, progress=False)  # the demo's data
        runs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            for name, extra in configs:
                result = run(name, extra, data_dir, Path(tmp), args.iterations, seed)
                print(json.dumps(result), flush=True)
                runs.append(result)
    table = ["| configuration | seed | optimizer, schedule, lr | best val mIoU | last val mIoU | test mIoU | "
             "images/s |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    table += [f"| {r['name']} | {r['seed']} | {r['optimizer']}, {r['schedule']}, {r['lr']:g} | {r['best_val_mean_iou']} "
              f"| {r['last_val_mean_iou']} | {r['test_mean_iou']} | {r['train_images_per_s']} |" for r in runs]
    print("\n".join(table))
    emit({"benchmark": "recipes on the demo's synthetic data", "machine": machine(), "iterations": args.iterations,
          "runs": runs, "table": table}, args.out)


if __name__ == "__main__":
    main(parse_args())
