"""Segment images, a video or a camera with a trained model: masks, overlays, navigation.

    python predict.py --model eval/deeplabv3/best.keras photo.jpg more_photos/ --out predictions/
    python predict.py --model eval/demo/best.keras --video drive.mp4 --out predictions/ --navigation safe
    python predict.py --model export/model_float32.tflite --camera 0 --every 2 --smooth 0.6  # Ctrl-C stops
    python predict.py --model export/model.onnx --video drive.mp4 --navigation safe

A .tflite or .onnx model runs without TensorFlow (kit/onboard.py: LiteRT, ONNX Runtime; what
requirements-car.txt installs on the vehicle); .keras and SavedModel models load TensorFlow.

Each image is segmented at its own size (grayscale and 16-bit images too). For `NAME.ext` it
writes `NAME_mask.png` (palettized in the data set's class colours, class indices as pixel
values) and `NAME_overlay.jpg`; inputs whose names would collide (`a/x.jpg`, `b/x.jpg`) are
told apart by their folders (`a_x_mask.png`, `b_x_mask.png`), and names still shared get
`_2`, `_3`. Nothing is written into a folder given as input, and no output replaces an input
(the run refuses before it starts). The classes come from the
model's run (its config.json) or export (classes.json), or --labelmap. A file that cannot be
read is reported by name, the others are still processed, and the exit status is non-zero.
With --navigation, each image is planned on (scaled down first where --mode / --max-pixels
would not run it whole; its mask is still full size) and also gets `NAME_navigation.png` (image, mask,
cost map, sector costs) and a line in `navigation.jsonl`; its overlay shows the heading.

A video (--video FILE) or camera (--camera INDEX) gives `NAME_overlay.mp4` (every frame, at the
input's frame rate; `cameraN_overlay.mp4` for a camera) and `NAME.jsonl`, one JSON object per
frame: frame, time_ms, predicted, class_fractions and, with --navigation, heading, stop and
sector_costs. --every N runs the model on every Nth frame only, --smooth A averages the class
probabilities over time. See kit/video.py.

--planner grid plans on the ground instead of image strips (kit/ground.py): the cost map is
mapped through the camera (--camera-height, --camera-pitch, and --hfov or --calibration) onto
a bird's-eye grid (--grid-size, --cell), a fan of arcs of the vehicle's width is scored over
it, and each JSON line carries the curvature, heading_deg, stop and the grid as nav2
OccupancyGrid values (0..100, -1 unknown). --save-grid also writes map_server's PGM + YAML
pair: NAME_grid.pgm/.yaml per image, NAME_grids/frame_N.pgm/.yaml per predicted video frame.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from kit import atomic
from kit import cli
from kit import config
from kit import data
from kit import ground
from kit import navigation
from kit import onboard
from kit import overlay
from kit import runtime
from kit import video
from kit.data import ClassTable, DataError
from kit.errors import KitError

NAVIGATION_LOG = "navigation.jsonl"  # images' headings, one JSON object per image


def _bounded_number(check: Callable[[float], float], bounds: str) -> Callable[[str], float]:
    """An argparse type: a number that `check` accepts (the bound lives in the library that
    uses the value), else a usage error with its message."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {bounds}, got {text!r}") from None
        try:
            return check(value)
        except KitError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def _class_costs(text: str) -> dict[str, float]:
    """NAME=COST,... -> {name: cost}; the names and the [0, 1] range are checked against the
    model's classes later (navigation.class_costs_for)."""
    costs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError(item)
            costs[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=COST items, e.g. road=0,curb=0.8; got {item!r}") from None
    return costs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a .keras model from train.py, or a .tflite, .onnx or SavedModel "
                   "from export.py (.tflite and .onnx run without TensorFlow)")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--video", metavar="FILE", help="a video file to segment frame by frame (instead of images)")
    p.add_argument("--camera", type=cli.whole_number(0), metavar="INDEX", help="a camera to segment (cv2.VideoCapture index, "
                   "e.g. 0) until Ctrl-C or --max-frames")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--navigation", choices=sorted(navigation.PROFILES), help="also plan a heading: drawn on "
                   "the overlays, logged per frame or image (default: no navigation)")
    p.add_argument("--class-costs", type=_class_costs, default={}, metavar="NAME=COST,...",
                   help="with --navigation: override the cost in [0, 1] of classes by name, e.g. "
                        "road=0,curb=0.8 (default: kit/navigation.py's table; unknown names cost 0.7)")
    p.add_argument("--planner", choices=("strips", "grid"), default="strips", help="with --navigation: strips "
                   "(the cheapest vertical strip of the image) or grid (arcs over the ground grid; needs the camera "
                   "flags) (default strips)")
    ground.add_arguments(p)
    p.add_argument("--save-grid", action="store_true", help="with --planner grid: also write map_server's PGM + YAML "
                   "pair of each grid")
    p.add_argument("--every", type=cli.whole_number(1), default=1, metavar="N", help="video: run the model on every Nth "
                   "frame, reusing its prediction on the frames between (default 1: every frame)")
    p.add_argument("--smooth", type=_bounded_number(video.check_smooth, "[0, 1)"), default=0.0, metavar="A",
                   help="video: average class probabilities over time, p = A * previous + (1 - A) * new, A in "
                   "[0, 1) (default 0: none)")
    p.add_argument("--max-frames", type=cli.whole_number(1), metavar="N", help="video: stop after N frames (a camera "
                   "otherwise runs until Ctrl-C)")
    p.add_argument("--labelmap", help="a CVAT labelmap.txt naming the model's classes (default: the model's run)")
    config.add_arguments(p, config.INFERENCE)
    p.add_argument("--alpha", type=_bounded_number(overlay.check_alpha, "[0, 1]"), default=0.5,
                   help="overlay opacity of the mask colours, in [0, 1]")
    cli.add_debug_flag(p)
    args = p.parse_args(argv)
    kinds = [kind for kind, given in (("images", args.inputs), ("--video", args.video),
                                      ("--camera", args.camera is not None)) if given]
    if len(kinds) != 1:
        p.error(f"give exactly one source: image files or folders, --video FILE or --camera INDEX "
                f"(got {' and '.join(kinds) if kinds else 'none'})")
    if args.planner == "grid" and not args.navigation:
        p.error("--planner grid plans a heading: give --navigation safe or --navigation adventurous too")
    if args.save_grid and args.planner != "grid":
        p.error("--save-grid writes the ground grid: give --planner grid too")
    return args


def collect(inputs: list[str]) -> list[Path]:
    """Files as given, and the images inside given folders (sorted). An empty folder is a DataError."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = data.image_files(item)
            if not found:
                raise DataError(f"{item} holds no images ({', '.join(data.IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(item)  # a missing file is reported when it is read
    return list(dict.fromkeys(files))


def output_names(files: list[Path]) -> list[str]:
    """A distinct output name per input: its stem, or, where stems collide, its path from the
    twins' common folder joined by "_" (a/x.jpg, b/x.jpg -> a_x, b_x), with the suffix where
    twins share a folder (a/x.jpg, a/x.png -> a_x_jpg, a_x_png). Names still shared after that
    (a/x.jpg and a_x.jpg both give a_x; c/y.jpg and c/y.JPG both c_y_jpg) get _2, _3... in input
    order. Names are compared ignoring case: macOS and Windows file systems do."""
    twins: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        twins[path.stem.casefold()].append(path.resolve())
    names = []
    for path in files:
        group = twins[path.stem.casefold()]
        if len(group) == 1:
            names.append(path.stem)
            continue
        base = Path(os.path.commonpath([p.parent for p in group]))
        name = "_".join(path.resolve().relative_to(base).with_suffix("").parts)
        if sum(p.parent == path.resolve().parent for p in group) > 1:  # a twin in the same folder
            name += "_" + path.suffix.lstrip(".").lower()
        names.append(name)
    wanted = {name.casefold() for name in names}
    used: set[str] = set()
    distinct = []
    for name in names:
        candidate, n = name, 1
        while candidate.casefold() in used or (n > 1 and candidate.casefold() in wanted):
            n += 1
            candidate = f"{name}_{n}"
        used.add(candidate.casefold())
        distinct.append(candidate)
    return distinct


OUTPUT_SUFFIXES = ("_mask.png", "_overlay.jpg", "_navigation.png")  # what predict_files writes per input


def check_outputs(inputs: list[str], files: list[Path], out: Path) -> list[str]:
    """The output names of `files`, after checking that writing them into `out` changes no input.

    A DataError (before anything is written) when `out` is one of the given folders, where this
    run's masks would sit among, and on a second run be read as, the images, or when an output
    would replace an input file (photo_mask.png given as an input and as photo.jpg's mask).
    """
    out_resolved = out.resolve()
    for item in map(Path, inputs):
        if item.is_dir() and item.resolve() == out_resolved:
            raise DataError(f"--out {out} is also an input folder: the masks and overlays would be written among "
                            f"the images (and could replace files there); pass another --out")
    names = output_names(files)
    inputs_resolved = {path.resolve() for path in files}
    for path, name in zip(files, names):
        clash = [out / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES
                 if (out / f"{name}{suffix}").resolve() in inputs_resolved]
        if clash:
            raise DataError(f"{path}'s output {clash[0]} is one of the inputs, and would be overwritten; "
                            f"pass another --out")
    return names


def predict_files(predictor: onboard.Predictor, files: list[Path], out: Path, classes: ClassTable | None = None,
                  alpha: float = 0.5, nav: video.NavigationSpec | None = None) -> tuple[list[Path], list[Path]]:
    """Segment each file, writing its mask and overlay to `out`; returns (written masks, failed inputs).

    With `nav`, each image is run whole (its probabilities are planned on), its overlay shows the
    heading, and NAME_navigation.png and a line of navigation.jsonl are written too.
    """
    classes = classes or ClassTable.voc()
    if nav is not None:
        from kit import figures  # matplotlib: loaded only for these figures, so that streams start without it
    out.mkdir(parents=True, exist_ok=True)
    written, failed, headings = [], [], []
    names = check_outputs([], files, out)
    for path, name in tqdm(list(zip(files, names)), desc="predict", unit="img"):
        try:
            image = onboard.read_image(path)
            predictor.check_size(*image.shape[:2])
        except Exception as err:  # unreadable, missing or too small: report it, carry on with the rest
            print(f"error: cannot read {path}: {type(err).__name__}: {err}", file=sys.stderr)
            failed.append(path)
            continue
        if nav is None:
            mask = predictor.masks(image[None])[0]  # (H, W) at the image's own size
            picture = overlay.blend(image, mask, classes, alpha)
        else:
            # (h, w, C), scaled down where --mode / --max-pixels would not run the image whole
            probs = predictor.planning_probabilities(image[None])
            if probs.shape[:2] == image.shape[:2]:
                mask = probs.argmax(axis=-1).astype(np.uint8)
            else:
                mask = predictor.masks(image[None])[0]  # full size, window by window
            result = nav.navigate(probs)
        if nav is not None and nav.ground is not None:  # the grid planner
            picture = video.draw_ground_navigation(overlay.blend(image, mask, classes, alpha), result, nav.ground)
            figures.ground_figure(image, mask, result, nav.ground, out / f"{name}_navigation.png", classes)
            if nav.save_grid:
                ground.save_map(result["cells"], nav.ground.grid, out / f"{name}_grid")
            headings.append({"image": str(path), **nav.record(result)})
        elif nav is not None:  # the strip planner
            picture = video.draw_navigation(overlay.blend(image, mask, classes, alpha), result)
            figures.navigation_figure([(image, mask, result)], out / f"{name}_navigation.png", classes,
                                      profile=nav.profile, stop_threshold=nav.stop_threshold)
            headings.append({"image": str(path), **nav.record(result)})
        # Through temporary names: a run stopped mid-write leaves the last run's files whole.
        with atomic.file(out / f"{name}_mask.png") as tmp:
            classes.save_mask(mask, tmp)
        with atomic.file(out / f"{name}_overlay.jpg") as tmp:
            Image.fromarray(picture).save(tmp, format="JPEG", quality=90)
        written.append(out / f"{name}_mask.png")
    if nav is not None:
        atomic.write_text(out / NAVIGATION_LOG, "".join(json.dumps(h) + "\n" for h in headings))
    return written, failed


def load(path: str, labelmap: str | None = None):
    """(model, its ClassTable, the Predictor class that runs it). A .tflite or .onnx file runs
    through kit/onboard.py (LiteRT, ONNX Runtime), so TensorFlow is never imported and need not
    be installed; its classes must be named (classes.json beside it, its run's config.json or
    --labelmap), not guessed. .keras and SavedModel models load TensorFlow (kit/inference.py)."""
    if onboard.runs_without_tensorflow(path):
        model = onboard.load_model(path)
        classes = onboard.classes_for_model(path, model, labelmap, guess_voc=False)
        return model, classes, onboard.Predictor
    runtime.start()  # before TensorFlow loads: a quiet start-up unless --debug (see kit/runtime.py)
    from kit import inference

    model = inference.load_model(path)
    return model, inference.classes_for_model(path, model, labelmap), inference.Predictor


def main(args) -> list[Path]:
    if args.class_costs and not args.navigation:
        raise config.ConfigError("--class-costs only changes navigation: add --navigation safe|adventurous, "
                                 "or leave --class-costs out")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise DataError(f"--out {args.out} is a file, not a folder: predictions are written into a folder; "
                        f"pass another --out")
    files = []
    if args.inputs:  # checked before the model loads: a refused run writes nothing
        files = collect(args.inputs)
        check_outputs(args.inputs, files, Path(args.out))
    model, classes, predictor_class = load(args.model, args.labelmap)
    onboard.check_classes(model, classes, args.model)
    predictor = predictor_class(model, **config.predictor_options(config.resolve(args, config.INFERENCE)))
    nav = None
    if args.navigation:
        try:
            costs = navigation.class_costs_for(classes.names, args.class_costs)
        except ValueError as err:
            raise config.ConfigError(f"--class-costs: {err}") from None
        navigator = None
        if args.planner == "grid":
            camera, grid = ground.from_arguments(args)
            navigator = ground.GroundNavigator(camera, grid, args.navigation, costs)
        nav = video.NavigationSpec(args.navigation, costs, ground=navigator, save_grid=args.save_grid)
    if args.video or args.camera is not None:
        result = video.run_stream(video.frame_model(predictor, args.smooth, nav),
                                  args.video if args.video else args.camera, Path(args.out), classes,
                                  alpha=args.alpha, every=args.every, nav=nav,
                                  max_frames=args.max_frames)
        print(f"wrote {result['frames']} frame(s) ({result['predicted']} predicted, {result['frames_per_s']} "
              f"frames/s) to {result['video']} and {result['jsonl']}")
        return [Path(result["video"]), Path(result["jsonl"])]
    written, failed = predict_files(predictor, files, Path(args.out), classes, args.alpha, nav)
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.out}")
    if failed:
        raise SystemExit(f"error: {len(failed)} of {len(files)} image(s) could not be segmented: "
                         + ", ".join(map(str, failed)))
    return written


if __name__ == "__main__":
    cli.run(main, parse_args)
