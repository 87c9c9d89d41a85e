"""Pictures for people: prediction grids, the confusion matrix and training curves (PNG files)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data import ClassTable  # noqa: E402


def prediction_grid(examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | Path,
                    classes: ClassTable | None = None) -> None:
    """Rows of input / ground truth / prediction in the data set's class colours; examples are
    (image (H, W, 3) in [0, 255], label (H, W), prediction (H, W))."""
    classes = classes or ClassTable.voc()
    rows = max(len(examples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for row, (image, label, pred) in zip(axes, examples):
        pictures = (np.clip(image, 0, 255).astype(np.uint8), classes.colourize(label), classes.colourize(pred))
        for ax, picture, title in zip(row, pictures, ("input", "ground truth", "prediction")):
            ax.imshow(picture)
            ax.set_title(title)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def confusion_matrix_figure(cm: np.ndarray, path: str | Path, class_names=ClassTable.voc().names) -> None:
    """Row-normalised confusion matrix (each true class sums to 1), classes by name."""
    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(cm)
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names[:n], rotation=90)
    ax.set_yticks(range(n), class_names[:n])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def training_curves(log_csv: str | Path, path: str | Path) -> bool:
    """Loss and metrics per epoch, train and validation, from train.py's log.csv.

    Returns False (and draws nothing) if the log is missing or empty; an unreadable log is
    reported on stderr rather than raised, so a damaged log never costs an evaluation its report.
    """
    log_csv = Path(log_csv)
    if not log_csv.is_file():
        return False
    try:
        with open(log_csv, encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) for r in rows]
        series = {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as err:
        print(f"warning: training curves not drawn: {log_csv} is unreadable ({type(err).__name__}: {err})",
              file=sys.stderr)
        return False
    if not rows:
        return False
    panels = [("loss", "loss"), ("mean_iou", "mean IoU"), ("pixel_accuracy", "pixel accuracy"),
              ("learning_rate", "learning rate")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in series:
                ax.plot(epochs, series[prefix + key], style, marker="o", label="validation" if prefix else "train")
        if key == "learning_rate":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True
