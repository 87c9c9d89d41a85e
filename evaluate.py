"""Score a trained model on the held-out test split and draw what it does.

    python evaluate.py                              # eval/deeplabv3/best.keras on the test split
    python evaluate.py --run-dir eval/demo          # the demo's model on synthetic data
    python evaluate.py --tta flip --scales 0.75,1,1.25

The test split is the second half of the shuffled VOC val list (pipeline.split_ids); by
default each image is scored at its original resolution. Writes metrics.json, a per-class
Markdown table, a confusion-matrix figure, a prediction grid and training curves to --out-dir.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

import download_data
import figures
import metrics
import pipeline
import prediction
from voc import CLASS_NAMES, NUM_CLASSES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="eval/deeplabv3", help="the training run (its config.json sets defaults)")
    p.add_argument("--model", help="model file (default RUN_DIR/best.keras)")
    p.add_argument("--data-dir", help="data folder (default: the run's)")
    p.add_argument("--dataset", choices=("voc", "synthetic"), help="default: the run's")
    p.add_argument("--subset", default="test", help="test (default), val or train")
    p.add_argument("--resolution", choices=("original", "input"), default="original",
                   help="original: each image at its own size; input: resized to the training input size")
    p.add_argument("--input-size", type=int, help="size for --resolution input (default: the run's)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size for --resolution input")
    p.add_argument("--tta", choices=("none", "flip"), default="none", help="test-time augmentation")
    p.add_argument("--scales", default="1", help="comma-separated input scales to average, e.g. 0.75,1,1.25")
    p.add_argument("--num-figures", type=int, default=6, help="test images in the prediction figure")
    p.add_argument("--out-dir", help="where reports go (default RUN_DIR)")
    return p.parse_args(argv)


def resolve(args) -> dict:
    """Flags win; then the run's config.json; then plain defaults."""
    run_dir = Path(args.run_dir)
    saved = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    return {"run_dir": run_dir, "model": Path(args.model or run_dir / "best.keras"),
            "data_dir": args.data_dir or saved.get("data_dir", "data"),
            "dataset": args.dataset or saved.get("dataset", "voc"),
            "num_train": saved.get("num_train", 200), "num_val": saved.get("num_val", 100),
            "input_size": args.input_size or saved.get("input_size", 384),
            "out_dir": Path(args.out_dir or run_dir)}


def per_class_table(scores: dict, cm: np.ndarray) -> str:
    """Markdown: class, IoU, accuracy (recall), ground-truth pixels."""
    lines = ["| class | IoU | accuracy | pixels |", "| --- | ---: | ---: | ---: |"]
    for c, name in enumerate(CLASS_NAMES):
        iou, acc = scores["per_class_iou"][c], scores["per_class_accuracy"][c]
        fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(iou)} | {fmt(acc)} | {int(cm[c].sum())} |")
    return "\n".join(lines) + "\n"


def main(args) -> dict:
    cfg = resolve(args)
    scales = [float(s) for s in args.scales.split(",")]
    voc_root = download_data.dataset_root(cfg["dataset"], cfg["data_dir"], cfg["num_train"], cfg["num_val"])
    model = prediction.load_model(cfg["model"])
    predictor = prediction.Predictor(model, flip=args.tta == "flip", scales=scales)
    original = args.resolution == "original"
    ds = pipeline.voc_dataset(voc_root, args.subset, 1 if original else args.batch_size,
                              input_size=None if original else (cfg["input_size"],) * 2)
    n_images = pipeline.subset_size(voc_root, args.subset)

    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)  # one matrix for the whole subset
    examples = []
    with tqdm(total=n_images, desc=f"evaluate {args.subset}", unit="img") as bar:
        for images, labels in ds:
            preds = predictor.masks(images)
            labels = labels.numpy()
            cm += metrics.confusion_from_masks(labels, preds, NUM_CLASSES)
            for i in range(len(preds)):
                if len(examples) < args.num_figures:
                    examples.append((images[i].numpy(), labels[i], preds[i]))
            bar.update(len(preds))

    scores = metrics.scores_from_confusion(cm)
    nan_to_none = lambda v: None if math.isnan(v) else float(v)  # noqa: E731
    report = {"pixel_accuracy": scores["pixel_accuracy"], "mean_accuracy": scores["mean_accuracy"],
              "mean_iou": scores["mean_iou"],
              "per_class_iou": {n: nan_to_none(v) for n, v in zip(CLASS_NAMES, scores["per_class_iou"])},
              "per_class_accuracy": {n: nan_to_none(v) for n, v in zip(CLASS_NAMES, scores["per_class_accuracy"])},
              "num_images": n_images, "subset": args.subset, "resolution": args.resolution,
              "tta": args.tta, "scales": scales, "model": str(cfg["model"]), "confusion_matrix": cm.tolist()}
    out = cfg["out_dir"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    table = per_class_table(scores, cm)
    (out / "per_class_iou.md").write_text(table)
    figures.confusion_matrix_figure(cm, out / "confusion_matrix.png")
    figures.prediction_grid(examples, out / "predictions.png")
    figures.training_curves(cfg["run_dir"] / "log.csv", out / "training_curves.png")
    print(f"{args.subset}: {n_images} images at {args.resolution} resolution  pixel accuracy "
          f"{report['pixel_accuracy']:.4f}  mean accuracy {report['mean_accuracy']:.4f}  mean IoU {report['mean_iou']:.4f}")
    print(table)
    print(f"reports written to {out}")
    return report


if __name__ == "__main__":
    main(parse_args())
