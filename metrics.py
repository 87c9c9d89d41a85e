"""Dataset-level segmentation metrics from one streaming confusion matrix.

`update_state` adds every batch's pixels to a (C, C) matrix (rows: true class, columns:
predicted class) until `reset_state`; pixel accuracy, mean accuracy and mean IoU are read
from that matrix, never averaged over batches. Pixels whose label is not a valid class
(VOC's 255) are ignored.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from voc import NUM_CLASSES


def confusion_matrix_update(y_true, y_pred_logits, num_classes: int):
    """(C, C) int32 counts for one batch: labels (B, H, W), logits (B, H, W, C)."""
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    pred = ops.reshape(ops.argmax(y_pred_logits, axis=-1), (-1,))
    pred = ops.cast(pred, "int32")
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    # Invalid pixels go to an overflow bin C*C that is dropped, keeping shapes static. A
    # segment sum with a fixed number of segments, not bincount: bincount's output length
    # depends on the data, which XLA (jit_compile) refuses to compile.
    index = ops.where(valid, labels * num_classes + pred, num_classes * num_classes)
    counts = ops.segment_sum(ops.ones_like(index), index, num_segments=num_classes * num_classes + 1)
    return ops.reshape(counts[: num_classes * num_classes], (num_classes, num_classes))


def confusion_from_masks(labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(C, C) int64 counts from label and predicted masks of the same shape, in NumPy."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    valid = (labels >= 0) & (labels < num_classes)
    counts = np.bincount(labels[valid] * num_classes + predictions[valid], minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray) -> dict:
    """Every score from a (C, C) confusion matrix, in NumPy, for reports.

    Mean accuracy averages recall over classes present in the ground truth; mean IoU
    averages IoU over classes whose union is non-empty.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp, gt, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(gt > 0, tp / gt, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
    total = cm.sum()
    return {"pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "mean_accuracy": float(np.nanmean(recall)) if (gt > 0).any() else float("nan"),
            "mean_iou": float(np.nanmean(iou)) if (union > 0).any() else float("nan"),
            "per_class_accuracy": recall, "per_class_iou": iou}


class ConfusionMatrixMetric(keras.metrics.Metric):
    """Base for the three metrics: holds the (C, C) confusion matrix as an int64 variable."""

    def __init__(self, num_classes: int = NUM_CLASSES, name: str = "confusion_matrix", **kwargs):
        super().__init__(name=name, **kwargs)
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

    def _parts(self):
        cm = ops.cast(self.cm, "float64")
        tp = ops.diagonal(cm)
        return cm, tp, ops.sum(cm, axis=1), ops.sum(cm, axis=0)

    @staticmethod
    def _masked_mean(values, mask):
        mask = ops.cast(mask, values.dtype)
        return ops.cast(ops.sum(ops.where(mask > 0, values, 0.0)) / ops.maximum(ops.sum(mask), 1.0), "float32")

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated (C, C) counts, rows true, columns predicted."""
        return np.asarray(keras.ops.convert_to_numpy(self.cm))

    def per_class_iou(self) -> np.ndarray:
        """IoU per class (NaN where the union is empty)."""
        return scores_from_confusion(self.confusion_matrix())["per_class_iou"]

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="deeplab")
class PixelAccuracyMetric(ConfusionMatrixMetric):
    """Correct valid pixels / valid pixels, over everything seen since `reset_state`."""

    def __init__(self, num_classes: int = NUM_CLASSES, name: str = "pixel_accuracy", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        cm, tp, _, _ = self._parts()
        return ops.cast(ops.sum(tp) / ops.maximum(ops.sum(cm), 1.0), "float32")


@keras.saving.register_keras_serializable(package="deeplab")
class MeanAccuracyMetric(ConfusionMatrixMetric):
    """Per-class recall averaged over classes present in the ground truth."""

    def __init__(self, num_classes: int = NUM_CLASSES, name: str = "mean_accuracy", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        _, tp, gt, _ = self._parts()
        return self._masked_mean(tp / ops.maximum(gt, 1.0), gt > 0)


@keras.saving.register_keras_serializable(package="deeplab")
class MeanIoUMetric(ConfusionMatrixMetric):
    """IoU averaged over classes whose union (ground truth or prediction) is non-empty."""

    def __init__(self, num_classes: int = NUM_CLASSES, name: str = "mean_iou", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        _, tp, gt, pred = self._parts()
        union = gt + pred - tp
        return self._masked_mean(tp / ops.maximum(union, 1.0), union > 0)


def segmentation_metrics(num_classes: int = NUM_CLASSES) -> list[keras.metrics.Metric]:
    """The three metrics that train.py compiles: pixel accuracy, mean accuracy, mean IoU."""
    return [PixelAccuracyMetric(num_classes), MeanAccuracyMetric(num_classes), MeanIoUMetric(num_classes)]
