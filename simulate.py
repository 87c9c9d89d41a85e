"""Drive the grid planner in closed loop through synthetic worlds, and compare the profiles.

    python simulate.py                                          # exact masks, 20 episodes, both profiles
    python simulate.py --model eval/demo-driving/best.keras     # a trained model's predictions
    python simulate.py --episodes 50 --seed 1 --out sim/        # also sim/simulation.json, per episode

A vehicle 0.4 m wide with kit/scene.py's camera (0.6 m up, 35 degrees down, 100 degrees across)
drives toward +x through floors strewn with boxes, cylinders and people-like posts. Each step it
segments the frame, maps the cost onto the 4 x 4 m ground grid and follows the arc the planner
picks (kit/simulation.py). Without --model the segmenter is the exact mask (NumPy only, no
TensorFlow); with --model it is the model's softmax. Every profile drives the same seeded
worlds. Printed per profile: collisions per 100 m driven, mean progress per episode, episodes
ended by a stop (no free arc), arrivals, and the smallest clearance between body and obstacle.
Train a model for it with `python train.py --demo --synthetic-kind driving --run-dir eval/demo-driving`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kit import atomic
from kit import cli
from kit import ground
from kit import scene
from kit import simulation
from kit import voc


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a .keras / .tflite / SavedModel trained on VOC's classes (e.g. train.py --demo "
                   "--synthetic-kind driving); default: drive on the exact masks")
    p.add_argument("--episodes", type=cli.whole_number(1), default=20, help="episodes per profile (default 20)")
    p.add_argument("--seed", type=int, default=0, help="episode i drives the world of seed (SEED, i) (default 0)")
    p.add_argument("--profiles", nargs="+", choices=sorted(ground.GRID_PROFILES), default=["safe", "adventurous"],
                   help="profiles to compare (default: safe adventurous)")
    p.add_argument("--frame-size", type=cli.whole_number(16), default=128, metavar="PX",
                   help="square frame the camera renders and the model segments (default 128)")
    p.add_argument("--course", type=float, default=12.0, help="metres forward to arrive (default 12)")
    p.add_argument("--max-steps", type=cli.whole_number(1), default=250, help="planning steps per episode (default 250)")
    p.add_argument("--step", type=float, default=0.1, help="metres driven per planning step (default 0.1)")
    p.add_argument("--vehicle-width", type=float, default=0.4, help="metres (default 0.4)")
    ground.add_arguments(p, scene.CAMERA)
    p.add_argument("--out", help="folder for simulation.json (settings, per-profile summary, every episode)")
    cli.add_debug_flag(p)
    return p.parse_args(argv)


def model_segmenter(path: str) -> simulation.Segmenter:
    """A trained model as a segmenter: frame -> softmax. Loads TensorFlow (only here)."""
    from kit import runtime
    runtime.start()
    from kit import inference  # noqa: E402  (TensorFlow comes with it)

    model = inference.load_model(path)
    classes = inference.classes_for_model(path, model)
    inference.check_classes(model, classes, path)
    if tuple(classes.names) != voc.CLASS_NAMES:
        raise inference.ModelFileError(f"{path} predicts {classes.num_classes} classes ({', '.join(classes.names[:4])}"
                                       f", ...) but the simulated worlds are labelled in VOC's 21; train on them "
                                       f"with train.py --demo --synthetic-kind driving")
    predictor = inference.Predictor(model)

    def segment(image, mask):
        return predictor.probabilities(image[None].astype("float32"))[0].numpy()  # (H, W, 21)

    return segment


def main(args) -> dict:
    camera, grid = ground.from_arguments(args)
    settings = simulation.Settings(episodes=args.episodes, seed=args.seed, size=(args.frame_size, args.frame_size),
                                   camera=camera, grid=grid, vehicle_width=args.vehicle_width, step=args.step,
                                   course=args.course, max_steps=args.max_steps)
    segment = model_segmenter(args.model) if args.model else simulation.ground_truth
    source = args.model or "exact masks"
    print(f"simulating {args.episodes} episode(s) per profile on {source}: {args.course:g} m course, "
          f"{args.frame_size} px frames, camera {camera.height:g} m up, {camera.pitch:g} deg down, "
          f"{grid.length:g}x{grid.width:g} m grid of {grid.cell:g} m")
    report = {"segmenter": source, "settings": {**{k: v for k, v in vars(args).items() if k not in ("debug",)}},
              "profiles": {}}
    for profile in args.profiles:
        start = time.perf_counter()
        results = simulation.run(settings, profile, segment)
        summary = {**simulation.summarise(results), "seconds": round(time.perf_counter() - start, 1)}
        report["profiles"][profile] = {"summary": summary, "episodes": results}
    print(table(report))
    if args.out:
        path = Path(args.out) / "simulation.json"
        atomic.write_text(path, json.dumps(report, indent=1, default=float) + "\n")
        print(f"wrote {path}")
    return report


def table(report: dict) -> str:
    """The per-profile summary as a Markdown table."""
    head = ("| profile | collisions / 100 m | progress / episode (m) | stops | arrived | collisions | "
            "driven (m) | min clearance (m) |\n|---|---|---|---|---|---|---|---|")
    rows = [f"| {name} | {s['collisions_per_100m']:.2f} | {s['progress_m']:.2f} | {s['stops']} / {s['episodes']} | "
            f"{s['arrived']} / {s['episodes']} | {s['collisions']} | {s['driven_m']:.1f} | {s['min_clearance_m']:.3f} |"
            for name, s in ((n, p["summary"]) for n, p in report["profiles"].items())]
    return "\n".join([head, *rows])


if __name__ == "__main__":
    cli.run(main, parse_args)
