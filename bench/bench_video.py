"""Video throughput: predict.py's threaded video loop against the bare model on the same frames.

    python bench/bench_video.py [--frames 96] [--size 256] [--rounds 8] [--backbone mobilenetv2]

Writes a synthetic video with OpenCV (mp4v, moving shapes), then times, in turns, round after
round: the bare model on the video's frames already decoded in memory (the Keras forward pass
in a tf.function, logits to NumPy, batch 1: the reference), Predictor.probabilities the same
way, and video.run_stream end to end (decode, model, masks, overlay, encode, JSON lines; reader
and writer threads overlap the model) with the per-frame call predict.py makes
(video.frame_model), plain, with --navigation safe --smooth 0.5 (which need probabilities
and plan on every frame: the image-strip planner), and the same with --planner grid (the
ground grid, kit/ground.py, with the simulated vehicle's camera). The plain loop and the strip
planner's also run with `inference.Predictor(model, cut_frames=False)`, the network whole on the
model's thread (its last upsampling included), to measure what cutting it there gains.

The goal is a loop at >= 90% of the bare model's frames/s. A shared or virtual machine's speed
drifts by 10-30% from one minute to the next, so each round runs every variant back to back,
and two figures are given: the loop's best round over the bare model's best round, and the
median over rounds of the loop's frames/s over the bare model's in the same round (paired, so
a slow spell hits both). CPU seconds per frame (all threads) say how much work each adds.
Random weights (speed does not depend on them); the demo preset's model (MobileNetV2, ASPP 64)
by default. Prints JSON.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import emit, machine

import cv2
import numpy as np
import tensorflow as tf

from kit import ground
from kit import navigation
from kit import scene
from kit import inference
from kit import video
from kit.data import ClassTable
from model import build_deeplabv3


def write_video(path: Path, frames: int, size: int, fps: float = 25.0) -> None:
    """A synthetic clip: a textured gradient with a square and a disc moving across it."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*video.FOURCC), fps, (size, size))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write {video.FOURCC} video to {path}")
    rng = np.random.default_rng(0)
    base = np.tile(np.linspace(40, 220, size, dtype=np.float32)[None, :, None], (size, 1, 3))
    for i in range(frames):
        frame = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        x = (5 * i) % size
        cv2.rectangle(frame, (x, size // 4), (x + size // 5, size // 2), (40, 200, 90), -1)
        cv2.circle(frame, (size - x, 3 * size // 4), size // 8, (200, 60, 60), -1)
        writer.write(frame)
    writer.release()


def decode(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None].astype(np.float32))
    capture.release()
    return frames


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--size", type=int, default=256, help="frame width and height")
    p.add_argument("--backbone", default="mobilenetv2", choices=("resnet50", "mobilenetv2"))
    p.add_argument("--aspp-filters", type=int, default=64, help="64: the demo preset's model")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds, every variant once per round")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(args):
    model = build_deeplabv3((None, None, 3), backbone=args.backbone, backbone_weights=None,
                            aspp_filters=args.aspp_filters, bn_momentum=0.9)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    predictor = inference.Predictor(model)
    uncut = inference.Predictor(model, cut_frames=False)
    classes = ClassTable.voc()
    costs = navigation.class_costs_for(classes.names)
    nav = video.NavigationSpec("safe", costs)
    grid_nav = video.NavigationSpec("safe", costs, ground=ground.GroundNavigator(
        scene.CAMERA, ground.Grid(length=4.0, width=4.0, cell=0.05), "safe", costs))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.mp4"
        write_video(clip, args.frames, args.size)
        frames = decode(clip)

        def bare():
            for x in frames:
                forward(x).numpy()

        def bare_probabilities():
            for x in frames:
                predictor.probabilities(x).numpy()

        def loop(smooth=0.0, nav=None, run=predictor):
            return lambda: video.run_stream(video.frame_model(run, smooth, nav), clip, tmp / "out", classes, nav=nav)

        runs = {"bare_model": bare, "bare_probabilities": bare_probabilities, "video_loop": loop(),
                "video_loop_navigation_smooth": loop(nav=nav, smooth=0.5),
                "video_loop_grid_navigation_smooth": loop(nav=grid_nav, smooth=0.5),
                "video_loop_uncut": loop(run=uncut),
                "video_loop_navigation_smooth_uncut": loop(nav=nav, smooth=0.5, run=uncut)}
        for fn in runs.values():  # trace every graph and warm every path once before timing
            fn()
        fps = {name: [] for name in runs}
        cpu_ms = {name: [] for name in runs}  # CPU time of all threads per frame
        for round_ in range(args.rounds):
            # Every other round in reverse (the bare model first always): no variant always
            # follows the same one, whose leftovers (caches, a machine's slow spell) it would inherit.
            order = list(runs.items())
            for name, fn in order if round_ % 2 == 0 else order[:1] + order[:0:-1]:
                start, cpu = time.perf_counter(), time.process_time()
                fn()
                seconds = time.perf_counter() - start
                fps[name].append(len(frames) / seconds)
                cpu_ms[name].append((time.process_time() - cpu) * 1000 / len(frames))
    loops = [name for name in runs if name.startswith("video_loop")]
    result = {"benchmark": "video", "machine": machine(), "backbone": args.backbone,
              "aspp_filters": args.aspp_filters, "size": args.size, "frames": len(frames), "fourcc": video.FOURCC,
              "opencv": cv2.__version__, "rounds": args.rounds,
              "frames_per_s_best": {k: round(max(v), 2) for k, v in fps.items()},
              "frames_per_s_median": {k: round(statistics.median(v), 2) for k, v in fps.items()},
              "cpu_ms_per_frame_median": {k: round(statistics.median(v), 1) for k, v in cpu_ms.items()},
              "fraction_of_bare_model_best": {k: round(max(fps[k]) / max(fps["bare_model"]), 3) for k in loops},
              "fraction_of_bare_model_paired_median": {
                  k: round(statistics.median(a / b for a, b in zip(fps[k], fps["bare_model"])), 3) for k in loops},
              # Smoothing and navigation need probabilities: their softmax is part of the price.
              "navigation_fraction_of_bare_probabilities_paired_median": {
                  k: round(statistics.median(a / b for a, b in zip(fps[k], fps["bare_probabilities"])), 3)
                  for k in loops if "navigation" in k},
              "cut_over_uncut_paired_median": {
                  k: round(statistics.median(a / b for a, b in zip(fps[k], fps[f"{k}_uncut"])), 3)
                  for k in ("video_loop", "video_loop_navigation_smooth")},
              "fraction_of_bare_model_per_round": {
                  k: [round(a / b, 3) for a, b in zip(fps[k], fps["bare_model"])] for k in loops}}
    emit(result, args.out)


if __name__ == "__main__":
    main(parse_args())
