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
told apart by their folders (`a_x_mask.png`, `b_x_mask.png`). The classes come from the
model's run (its config.json) or export (classes.json), or --labelmap. A file that cannot be
read is reported by name, the others are still processed, and the exit status is non-zero.
With --navigation, each image is run whole and also gets `NAME_navigation.png` (image, mask,
cost map, sector costs) and a line in `navigation.jsonl`; its overlay shows the heading.

A video (--video FILE) or camera (--camera INDEX) gives `NAME_overlay.mp4` (every frame, at the
input's frame rate; `cameraN_overlay.mp4` for a camera) and `NAME.jsonl`, one JSON object per
frame: frame, time_ms, predicted, class_fractions and, with --navigation, heading, stop and
sector_costs. --every N runs the model on every Nth frame only, --smooth A averages the class
probabilities over time. See kit/video.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from kit import atomic
from kit import cli
from kit import config
from kit import navigation
from kit import onboard
from kit import runtime
from kit import video
from kit.data import ClassTable, DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
NAVIGATION_LOG = "navigation.jsonl"  # images' headings, one JSON object per image


def _smooth_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    try:
        return video.check_smooth(value)  # the bound lives there
    except video.VideoError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    p.add_argument("--camera", type=int, metavar="INDEX", help="a camera to segment (cv2.VideoCapture index, "
                   "e.g. 0) until Ctrl-C or --max-frames")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--navigation", choices=sorted(navigation.PROFILES), help="also plan a heading: drawn on "
                   "the overlays, logged per frame or image (default: no navigation)")
    p.add_argument("--class-costs", type=_class_costs, default={}, metavar="NAME=COST,...",
                   help="with --navigation: override the cost in [0, 1] of classes by name, e.g. "
                        "road=0,curb=0.8 (default: kit/navigation.py's table; unknown names cost 0.7)")
    p.add_argument("--every", type=cli.whole_number(1), default=1, metavar="N", help="video: run the model on every Nth "
                   "frame, reusing its prediction on the frames between (default 1: every frame)")
    p.add_argument("--smooth", type=_smooth_factor, default=0.0, metavar="A", help="video: average class "
                   "probabilities over time, p = A * previous + (1 - A) * new, A in [0, 1) (default 0: none)")
    p.add_argument("--max-frames", type=cli.whole_number(1), metavar="N", help="video: stop after N frames (a camera "
                   "otherwise runs until Ctrl-C)")
    p.add_argument("--labelmap", help="a CVAT labelmap.txt naming the model's classes (default: the model's run)")
    config.add_arguments(p, config.INFERENCE)
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours")
    cli.add_debug_flag(p)
    args = p.parse_args(argv)
    kinds = [kind for kind, given in (("images", args.inputs), ("--video", args.video),
                                      ("--camera", args.camera is not None)) if given]
    if len(kinds) != 1:
        p.error(f"give exactly one source: image files or folders, --video FILE or --camera INDEX "
                f"(got {' and '.join(kinds) if kinds else 'none'})")
    return args


def collect(inputs: list[str]) -> list[Path]:
    """Files as given, and the images inside given folders (sorted). An empty folder is a DataError."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{item} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        else:
            files.append(item)  # a missing file is reported when it is read
    return list(dict.fromkeys(files))


def output_names(files: list[Path]) -> list[str]:
    """A distinct output name per input: its stem, or, where stems collide, its path from the
    twins' common folder joined by "_" (a/x.jpg, b/x.jpg -> a_x, b_x), with the suffix where
    twins share a folder (a/x.jpg, a/x.png -> a_x_jpg, a_x_png)."""
    twins: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        twins[path.stem].append(path.resolve())
    names = []
    for path in files:
        group = twins[path.stem]
        if len(group) == 1:
            names.append(path.stem)
            continue
        base = Path(os.path.commonpath([p.parent for p in group]))
        name = "_".join(path.resolve().relative_to(base).with_suffix("").parts)
        if sum(p.parent == path.resolve().parent for p in group) > 1:  # a twin in the same folder
            name += "_" + path.suffix.lstrip(".").lower()
        names.append(name)
    return names


def overlay(image: np.ndarray, mask: np.ndarray, classes: ClassTable, alpha: float) -> np.ndarray:
    """Blend class colours over the image wherever a class other than class 0 is predicted."""
    if image.dtype != np.uint8:  # read_image gives float32 in [0, 255]
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    # A saturating uint8 blend and a masked copy (OpenCV) rather than float arithmetic and
    # np.where: this runs on the video writer's thread, where it competes with the model.
    mask = np.ascontiguousarray(mask, dtype=np.uint8)  # (H, W)
    blended = cv2.addWeighted(np.ascontiguousarray(image), 1.0 - alpha, classes.colourize(mask), alpha, 0.0)
    cv2.copyTo(image, (mask == 0).view(np.uint8), blended)  # class 0 keeps the image's own pixels
    return blended


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
    for path, name in tqdm(list(zip(files, output_names(files))), desc="predict", unit="img"):
        try:
            image = onboard.read_image(path)
            predictor.check_size(*image.shape[:2])
        except Exception as err:  # unreadable, missing or too small: report it, carry on with the rest
            print(f"error: cannot read {path}: {type(err).__name__}: {err}", file=sys.stderr)
            failed.append(path)
            continue
        if nav is None:
            mask = predictor.masks(image[None])[0]  # (H, W) at the image's own size
            picture = overlay(image, mask, classes, alpha)
        else:
            probs = np.asarray(predictor.probabilities(image[None])[0])  # (H, W, C)
            mask = probs.argmax(axis=-1).astype(np.uint8)
            result = nav.navigate(probs)
            picture = video.draw_navigation(overlay(image, mask, classes, alpha), result)
            figures.navigation_figure([(image, mask, result)], out / f"{name}_navigation.png", classes,
                                      profile=nav.profile, stop_threshold=nav.stop_threshold)
            headings.append({"image": str(path), **nav.record(result)})
        classes.save_mask(mask, out / f"{name}_mask.png")
        Image.fromarray(picture).save(out / f"{name}_overlay.jpg", quality=90)
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
    model, classes, predictor_class = load(args.model, args.labelmap)
    onboard.check_classes(model, classes, args.model)
    predictor = predictor_class(model, **config.predictor_options(config.resolve(args, config.INFERENCE)))
    nav = None
    if args.navigation:
        try:
            costs = navigation.class_costs_for(classes.names, args.class_costs)
        except ValueError as err:
            raise config.ConfigError(f"--class-costs: {err}") from None
        nav = video.NavigationSpec(args.navigation, costs)
    if args.video or args.camera is not None:
        result = video.run_stream(video.frame_model(predictor, args.smooth, nav),
                                  args.video if args.video else args.camera, Path(args.out), classes, overlay,
                                  alpha=args.alpha, every=args.every, nav=nav,
                                  max_frames=args.max_frames)
        print(f"wrote {result['frames']} frame(s) ({result['predicted']} predicted, {result['frames_per_s']} "
              f"frames/s) to {result['video']} and {result['jsonl']}")
        return [Path(result["video"]), Path(result["jsonl"])]
    files = collect(args.inputs)
    written, failed = predict_files(predictor, files, Path(args.out), classes, args.alpha, nav)
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.out}")
    if failed:
        raise SystemExit(f"error: {len(failed)} of {len(files)} image(s) could not be segmented: "
                         + ", ".join(map(str, failed)))
    return written


if __name__ == "__main__":
    cli.run(main, parse_args)
