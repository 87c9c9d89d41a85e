"""Video throughput: predict.py's threaded video loop against the bare model on the same frames.

    python bench/bench_video.py [--frames 96] [--size 256] [--backbone mobilenetv2]

Writes a synthetic video with OpenCV (mp4v, moving shapes), then times, in turns (best of
--rounds): the bare model on the video's frames already decoded in memory (the Keras forward
pass in a tf.function, and Predictor.probabilities, the call the loop makes; batch 1; the
faster of the two is the reference), and video.run_stream end to end (decode, model, overlay, encode, JSON lines;
reader and writer threads overlap the model), plain and with --navigation safe --smooth 0.5.
The goal is a loop at >= 90% of the bare model's frames/s. Random weights (speed does not depend
on them); the demo preset's model (MobileNetV2, ASPP 64) by default. Prints JSON.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import emit, machine

import cv2
import numpy as np
import tensorflow as tf

import navigation
import predict
import prediction
import video
from data import ClassTable
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
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the best of each is kept")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(args):
    model = build_deeplabv3((None, None, 3), backbone=args.backbone, backbone_weights=None,
                            aspp_filters=args.aspp_filters, bn_momentum=0.9)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    predictor = prediction.Predictor(model)
    classes = ClassTable.voc()
    nav = video.NavigationSpec("safe", navigation.class_costs_for(classes.names))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.mp4"
        write_video(clip, args.frames, args.size)
        frames = decode(clip)

        def bare():
            for x in frames:
                forward(x).numpy()

        def bare_predictor():
            for x in frames:
                predictor.probabilities(x).numpy()

        def loop(**options):
            return lambda: video.run_stream(lambda x: predictor.probabilities(x)[0].numpy(), clip, tmp / "out",
                                            classes, predict.overlay, **options)

        runs = {"bare_model": bare, "bare_predictor": bare_predictor, "video_loop": loop(),
                "video_loop_navigation_smooth": loop(nav=nav, smooth=0.5)}
        forward(frames[0]).numpy()  # trace both paths once before timing
        predictor.probabilities(frames[0]).numpy()
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(args.rounds):  # in turns, so a slow spell on a shared machine hits all alike
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    fps = {name: len(frames) / seconds for name, seconds in best.items()}
    bare_fps = max(fps["bare_model"], fps["bare_predictor"])  # the stricter reference of the two
    result = {"benchmark": "video", "machine": machine(), "backbone": args.backbone,
              "aspp_filters": args.aspp_filters, "size": args.size, "frames": len(frames), "fourcc": video.FOURCC,
              "opencv": cv2.__version__, "rounds": args.rounds, "frames_per_s": {k: round(v, 2) for k, v in fps.items()},
              "fraction_of_bare_model": {k: round(v / bare_fps, 3) for k, v in fps.items()
                                         if not k.startswith("bare_")}}
    emit(result, args.out)


if __name__ == "__main__":
    main(parse_args())
