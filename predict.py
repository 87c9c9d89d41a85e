"""Segment images with a trained model: a VOC-palette PNG mask and a colour overlay per image.

    python predict.py --model eval/deeplabv3/best.keras photo.jpg more_photos/ --out predictions/

Each image is segmented at its own size (grayscale images too). For `NAME.ext` it writes
`NAME_mask.png` (palettized, VOC colours, class indices as pixel values) and
`NAME_overlay.jpg`. A file that cannot be read is reported by name, the others are still
processed, and the exit status is non-zero at the end.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import prediction
from voc import PALETTE, save_mask

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a .keras model from train.py, or a .tflite / SavedModel from export.py")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--tta", choices=("none", "flip"), default="none", help="test-time augmentation")
    p.add_argument("--scales", default="1", help="comma-separated input scales to average")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours")
    return p.parse_args(argv)


def collect(inputs: list[str]) -> list[Path]:
    """Files as given, and the images inside given folders (sorted)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(item)  # a missing file is reported when it is read
    return files


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """Blend mask colours over the image where a class other than background is predicted."""
    colours = PALETTE[mask].astype(np.float32)
    blended = np.where((mask > 0)[..., None], (1 - alpha) * image + alpha * colours, image)
    return np.clip(blended, 0, 255).astype(np.uint8)


def predict_files(predictor: prediction.Predictor, files: list[Path], out: Path,
                  alpha: float = 0.5) -> tuple[list[Path], list[Path]]:
    """Segment each file, writing its mask and overlay to `out`; returns (written masks, failed inputs)."""
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for path in tqdm(files, desc="predict", unit="img"):
        try:
            image = prediction.read_image(path)
        except Exception as err:  # unreadable or missing: report it, carry on with the rest
            print(f"error: cannot read {path}: {type(err).__name__}: {err}", file=sys.stderr)
            failed.append(path)
            continue
        mask = predictor.masks(image[None])[0]  # (H, W) at the image's own size
        save_mask(mask, out / f"{path.stem}_mask.png")
        Image.fromarray(overlay(image, mask, alpha)).save(out / f"{path.stem}_overlay.jpg", quality=90)
        written.append(out / f"{path.stem}_mask.png")
    return written, failed


def main(args) -> list[Path]:
    predictor = prediction.Predictor(prediction.load_model(args.model), flip=args.tta == "flip",
                                     scales=[float(s) for s in args.scales.split(",")])
    files = collect(args.inputs)
    written, failed = predict_files(predictor, files, Path(args.out), args.alpha)
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.out}")
    if failed:
        raise SystemExit(f"error: {len(failed)} of {len(files)} image(s) could not be read: "
                         + ", ".join(map(str, failed)))
    return written


if __name__ == "__main__":
    main(parse_args())
