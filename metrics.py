"""Segmentation scores from one confusion matrix: the one implementation training, evaluation,
the export report and the benchmarks all use.

    cm = metrics.ConfusionMatrix(num_classes)       # torchvision's ConfusionMatrix shape
    for labels, predicted_masks in batches:
        cm.update(labels, predicted_masks)
    cm.compute()["mean_iou"]; cm.table(class_names)

`confusion_matrix_update` counts one batch into a (C, C) matrix (rows: true class, columns:
predicted class) and `scores` derives pixel accuracy, mean accuracy, mean IoU and the
per-class values from a matrix, both in keras.ops so the Keras metrics run them inside the
training graph (XLA included) and ConfusionMatrix runs them eagerly. Scores are always read
from a matrix accumulated over the whole evaluation, never averaged over batches. Pixels whose
label is not a valid class (VOC's 255) are ignored.
"""
from __future__ import annotations

import math

import keras
import numpy as np
import pandas as pd
from keras import ops

from kit import tables
from kit.voc import NUM_CLASSES

SCORES = ("pixel_accuracy", "mean_accuracy", "mean_iou")


def confusion_matrix_update(y_true, y_pred, num_classes: int, from_logits: bool = True):
    """(C, C) int32 counts for one batch.

    Args:
        y_true: (B, H, W) int labels; values outside 0..C-1 are ignored.
        y_pred: (B, H, W, >= C) logits (argmax over the first C channels: a training model with
            an auxiliary head appends its logits), or (B, H, W) class indices if not from_logits.
    """
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    pred = ops.argmax(y_pred[..., :num_classes], axis=-1) if from_logits else y_pred
    pred = ops.cast(ops.reshape(pred, (-1,)), "int32")
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    # Invalid pixels go to an overflow bin C*C that is dropped, keeping shapes static. A
    # segment sum with a fixed number of segments, not bincount: bincount's output length
    # depends on the data, which XLA (jit_compile) refuses to compile.
    index = ops.where(valid, labels * num_classes + pred, num_classes * num_classes)
    counts = ops.segment_sum(ops.ones_like(index), index, num_segments=num_classes * num_classes + 1)
    return ops.reshape(counts[: num_classes * num_classes], (num_classes, num_classes))


def scores(cm) -> dict:
    """Scores of a (C, C) confusion matrix, as float64 tensors.

    pixel_accuracy: correct / all counted pixels. per_class_accuracy: recall, NaN for classes
    absent from the ground truth; mean_accuracy averages the others. per_class_iou: TP /
    (TP + FP + FN), NaN where that union is empty; mean_iou averages the others. An empty
    matrix scores 0.
    """
    cm = ops.cast(cm, "float64")
    tp, gt, pred = ops.diagonal(cm), ops.sum(cm, axis=1), ops.sum(cm, axis=0)
    union = gt + pred - tp
    nan = ops.full_like(tp, math.nan)

    def per_class(numerator, denominator):
        return ops.where(denominator > 0, numerator / ops.maximum(denominator, 1.0), nan)

    def mean(values, present):
        present = ops.cast(present, "float64")
        return ops.sum(ops.where(present > 0, values, 0.0)) / ops.maximum(ops.sum(present), 1.0)

    accuracy, iou = per_class(tp, gt), per_class(tp, union)
    return {"pixel_accuracy": ops.sum(tp) / ops.maximum(ops.sum(cm), 1.0),
            "mean_accuracy": mean(accuracy, gt > 0), "mean_iou": mean(iou, union > 0),
            "per_class_accuracy": accuracy, "per_class_iou": iou}


class ConfusionMatrix:
    """Accumulates one (C, C) int64 matrix over a whole evaluation (eagerly), and scores it."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, labels, predictions) -> None:
        """Add a batch: labels and predicted class indices of the same shape, (B, H, W) or (H, W)."""
        self.matrix += np.asarray(confusion_matrix_update(labels, predictions, self.num_classes, from_logits=False))

    def reset(self) -> None:
        self.matrix[:] = 0

    def compute(self) -> dict:
        """{pixel_accuracy, mean_accuracy, mean_iou: float; per_class_accuracy, per_class_iou: (C,) arrays}."""
        return {k: (float(v) if k in SCORES else np.asarray(v)) for k, v in scores(self.matrix).items()}

    def report(self, class_names) -> dict:
        """compute() for JSON: per-class values keyed by class name (None for NaN), and the matrix."""
        result = self.compute()
        by_name = {f"per_class_{k}": {n: None if math.isnan(v) else float(v) for n, v in
                                      zip(class_names, result[f"per_class_{k}"])} for k in ("iou", "accuracy")}
        return {**{k: result[k] for k in SCORES}, **by_name, "confusion_matrix": self.matrix.tolist()}

    def table(self, class_names) -> str:
        """Markdown: class, IoU, accuracy (recall), ground-truth pixels."""
        result = self.compute()
        frame = pd.DataFrame({"IoU": result["per_class_iou"], "accuracy": result["per_class_accuracy"],
                              "pixels": self.matrix.sum(axis=1)}, index=pd.Index(list(class_names), name="class"))
        return tables.markdown(frame)  # NaN (a class in neither labels nor predictions) as n/a


class ConfusionMatrixMetric(keras.metrics.Metric):
    """A Keras metric reporting one of SCORES from a (C, C) int64 confusion matrix it accumulates."""

    score = "mean_iou"

    def __init__(self, num_classes: int = NUM_CLASSES, name: str | None = None, **kwargs):
        super().__init__(name=name or self.score, **kwargs)
        self.num_classes = num_classes
        # int64: a VOC epoch is ~3e8 pixels, past float32's exact integer range.
        self.cm = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", dtype="int64",
                                    name="cm", aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{self.name} does not take sample_weight; mark pixels to skip with the ignore label")
        self.cm.assign_add(ops.cast(confusion_matrix_update(y_true, y_pred, self.num_classes), "int64"))

    def reset_state(self):
        self.cm.assign(ops.zeros_like(self.cm))

    def result(self):
        return ops.cast(scores(self.cm)[self.score], "float32")

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated (C, C) counts, rows true, columns predicted."""
        return np.asarray(keras.ops.convert_to_numpy(self.cm))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="deeplab")
class PixelAccuracyMetric(ConfusionMatrixMetric):
    """Correct valid pixels / valid pixels, over everything seen since `reset_state`."""

    score = "pixel_accuracy"


@keras.saving.register_keras_serializable(package="deeplab")
class MeanAccuracyMetric(ConfusionMatrixMetric):
    """Per-class recall averaged over classes present in the ground truth."""

    score = "mean_accuracy"


@keras.saving.register_keras_serializable(package="deeplab")
class MeanIoUMetric(ConfusionMatrixMetric):
    """IoU averaged over classes whose union (ground truth or prediction) is non-empty."""

    score = "mean_iou"


def segmentation_metrics(num_classes: int = NUM_CLASSES) -> list[keras.metrics.Metric]:
    """The three metrics that train.py compiles: pixel accuracy, mean accuracy, mean IoU."""
    return [PixelAccuracyMetric(num_classes), MeanAccuracyMetric(num_classes), MeanIoUMetric(num_classes)]
