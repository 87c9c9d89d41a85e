"""Segment images with a trained model: a palettized PNG mask and a colour overlay per image.

    python predict.py --model eval/deeplabv3/best.keras photo.jpg more_photos/ --out predictions/

Each image is segmented at its own size (grayscale and 16-bit images too). For `NAME.ext` it
writes `NAME_mask.png` (palettized in the data set's class colours, class indices as pixel
values) and `NAME_overlay.jpg`; inputs whose names would collide (`a/x.jpg`, `b/x.jpg`) are
told apart by their folders (`a_x_mask.png`, `b_x_mask.png`). The classes come from the
model's run (its config.json) or export (classes.json), or --labelmap. A file that cannot be
read is reported by name, the others are still processed, and the exit status is non-zero.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import runtime

runtime.start()  # before TensorFlow loads: a quiet start-up unless --debug (see runtime.py)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

import cli  # noqa: E402
import config  # noqa: E402
import prediction  # noqa: E402
from data import ClassTable, DataError  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a .keras model from train.py, or a .tflite / SavedModel from export.py")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--labelmap", help="a CVAT labelmap.txt naming the model's classes (default: the model's run)")
    config.add_arguments(p, config.INFERENCE)
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours")
    cli.add_debug_flag(p)
    return p.parse_args(argv)


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
    colours = classes.colourize(mask).astype(np.float32)
    blended = np.where((mask > 0)[..., None], (1 - alpha) * image + alpha * colours, image)
    return np.clip(blended, 0, 255).astype(np.uint8)


def predict_files(predictor: prediction.Predictor, files: list[Path], out: Path, classes: ClassTable,
                  alpha: float = 0.5) -> tuple[list[Path], list[Path]]:
    """Segment each file, writing its mask and overlay to `out`; returns (written masks, failed inputs)."""
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for path, name in tqdm(list(zip(files, output_names(files))), desc="predict", unit="img"):
        try:
            image = prediction.read_image(path)
        except Exception as err:  # unreadable or missing: report it, carry on with the rest
            print(f"error: cannot read {path}: {type(err).__name__}: {err}", file=sys.stderr)
            failed.append(path)
            continue
        mask = predictor.masks(image[None])[0]  # (H, W) at the image's own size
        classes.save_mask(mask, out / f"{name}_mask.png")
        Image.fromarray(overlay(image, mask, classes, alpha)).save(out / f"{name}_overlay.jpg", quality=90)
        written.append(out / f"{name}_mask.png")
    return written, failed


def main(args) -> list[Path]:
    model = prediction.load_model(args.model)
    classes = prediction.classes_for_model(args.model, model, args.labelmap)
    prediction.check_classes(model, classes, args.model)
    predictor = prediction.Predictor(model, **config.predictor_options(config.resolve(args, config.INFERENCE)))
    files = collect(args.inputs)
    written, failed = predict_files(predictor, files, Path(args.out), classes, args.alpha)
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.out}")
    if failed:
        raise SystemExit(f"error: {len(failed)} of {len(files)} image(s) could not be read: "
                         + ", ".join(map(str, failed)))
    return written


if __name__ == "__main__":
    cli.run(main, parse_args)
