"""On the car: predict.py with TFLite under LiteRT and ONNX under ONNX Runtime, against the Keras model.

    python bench/bench_car.py [--sizes 128,256] [--frames 60] [--rounds 3] [--out car.json]

For each size (128: the demo preset's; 256) it builds the demo's model (MobileNetV2, ASPP 64,
21 classes, random weights: speed does not depend on them), saves it as .keras and exports it
as export.py does to model_float32.tflite and model.onnx (with classes.json), writes a
synthetic clip of that size (bench_video.write_video) and a still image, then runs predict.py
as the vehicle would, one fresh process per measurement:

- start-up to first mask: wall time of `predict.py --model M image.png` from process start to
  exit (imports, model load, one image segmented, its mask and overlay written);
- frames/s: what `predict.py --model M --video clip.mp4` prints (the stream loop, after start-up);
- peak resident memory (VmHWM) of each of those processes.

The .tflite and .onnx runs happen in a process where importing tensorflow or keras fails
(tests/no_tensorflow on PYTHONPATH), so their figures are those of a machine without
TensorFlow; `--python` runs them under another interpreter (e.g. a venv made from
requirements-car.txt). Rounds interleave the three formats so that a slow spell of a shared
machine hits all of them; medians over rounds are reported, and the load average before and
after. Prints JSON and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, emit, machine

import numpy as np
from PIL import Image

from bench_video import write_video
from kit import atomic
from kit import deploy
from kit import onboard
from kit.data import ClassTable
from model import build_deeplabv3

FORMATS = {"keras": "model.keras", "litert": "model_float32.tflite", "onnxruntime": "model.onnx"}
NO_TENSORFLOW = ROOT / "tests" / "no_tensorflow"  # its sitecustomize blocks tensorflow and keras
FPS_LINE = re.compile(r"wrote (\d+) frame\(s\) \((\d+) predicted, ([0-9.]+) frames/s\)")


def prepare(folder: Path, size: int, frames: int) -> tuple[dict[str, Path], Path, Path]:
    """The demo model at `size` in every format, a clip and an image of that size."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_deeplabv3((None, None, 3), backbone="mobilenetv2", backbone_weights=None, aspp_filters=64)
    files = {name: folder / file for name, file in FORMATS.items()}
    model.save(files["keras"])
    atomic.write_bytes(files["litert"], deploy.tflite_bytes(model, size, "float32"))
    deploy.export_onnx(model, files["onnxruntime"], size)
    atomic.write_text(folder / onboard.CLASSES_FILE, json.dumps(ClassTable.voc().to_json()))
    clip = folder / "clip.mp4"
    write_video(clip, frames, size)
    image = folder / "still.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(image)
    return files, clip, image


def run(argv: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one process, which must succeed.

    The peak is the child's VmHWM (/proc/PID/status), polled every 10 ms until it exits: it
    counts only the memory of the program it runs. wait4's ru_maxrss does not serve: Linux
    carries the high-water mark across exec, so every child reported this (TensorFlow-loaded)
    process's own 1.3 GB.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        status, peak_kib = Path(f"/proc/{proc.pid}/status"), 0
        while proc.poll() is None:
            try:
                found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M)
            except OSError:  # gone between poll and read
                found = None
            peak_kib = max(peak_kib, int(found.group(1)) if found else 0)
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        return seconds, peak_kib / 1024, out.read()


def main(args) -> dict:
    sizes = [int(s) for s in args.sizes.split(",")]
    base_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    envs = {"keras": base_env, "litert": {**base_env, "PYTHONPATH": str(NO_TENSORFLOW)}}
    envs["onnxruntime"] = envs["litert"]
    pythons = {"keras": sys.executable, "litert": args.python or sys.executable,
               "onnxruntime": args.python or sys.executable}
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            files, clip, image = prepare(Path(tmp) / str(size), size, args.frames)
            rows = {name: {"startup_s": [], "startup_rss_mib": [], "frames_per_s": [], "video_rss_mib": []}
                    for name in FORMATS}
            for _ in range(args.rounds):
                for name in FORMATS:
                    predict = [pythons[name], "predict.py", "--model", str(files[name])]
                    seconds, rss, _ = run(predict + [str(image), "--out", str(Path(tmp) / "out")], envs[name])
                    rows[name]["startup_s"].append(seconds)
                    rows[name]["startup_rss_mib"].append(rss)
                    _, rss, out = run(predict + ["--video", str(clip), "--out", str(Path(tmp) / "out")], envs[name])
                    found = FPS_LINE.search(out)
                    if not found or int(found.group(1)) != args.frames:
                        raise SystemExit(f"predict.py --video with {name} did not report {args.frames} frames: {out}")
                    rows[name]["frames_per_s"].append(float(found.group(3)))
                    rows[name]["video_rss_mib"].append(rss)
            results[str(size)] = {name: {key: round(statistics.median(v), 3) for key, v in row.items()}
                                  | {"runs": row} for name, row in rows.items()}
            keras = results[str(size)]["keras"]
            for name in ("litert", "onnxruntime"):
                mine = results[str(size)][name]
                mine["vs_keras"] = {"startup_speedup": round(keras["startup_s"] / mine["startup_s"], 2),
                                    "memory_fraction": round(mine["video_rss_mib"] / keras["video_rss_mib"], 3),
                                    "frames_per_s_ratio": round(mine["frames_per_s"] / keras["frames_per_s"], 2)}
    report = {"machine": machine(), "load_average": {"before": load_before, "after": os.getloadavg()},
              "frames": args.frames, "rounds": args.rounds, "python_tf_free": pythons["litert"],
              "goal": "TF-free start-up >= 3x faster, memory <= 1/3, frames/s >= Keras", "sizes": results}
    emit(report, args.out)
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = ["| size | runtime | start-up to first mask (s) | peak RSS, image (MiB) | frames/s (--video) | "
             "peak RSS, video (MiB) | start-up speed-up | memory vs Keras | frames/s vs Keras |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size, rows in report["sizes"].items():
        for name, r in rows.items():
            v = r.get("vs_keras", {})
            lines.append(f"| {size} | {name} | {r['startup_s']:.2f} | {r['startup_rss_mib']:.0f} | "
                         f"{r['frames_per_s']:.1f} | {r['video_rss_mib']:.0f} | "
                         f"{v.get('startup_speedup', 1.0):.1f}x | {v.get('memory_fraction', 1.0):.2f} | "
                         f"{v.get('frames_per_s_ratio', 1.0):.2f} |")
    m = report["machine"]
    lines.append(f"\nMedians of {report['rounds']} rounds, {report['frames']} frames per clip; {m['cpu']}, "
                 f"{m['cores']} cores; load average {report['load_average']['before'][0]:.2f} before, "
                 f"{report['load_average']['after'][0]:.2f} after.")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128,256", help="square model and clip sizes (128: the demo preset's)")
    p.add_argument("--frames", type=int, default=60, help="frames in each clip")
    p.add_argument("--rounds", type=int, default=3, help="measurements of each runtime, interleaved")
    p.add_argument("--python", help="interpreter for the TF-free runs (default this one, with TensorFlow blocked)")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
