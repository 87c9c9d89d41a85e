"""Segmentation losses on int labels (B, H, W) and logits (B, H, W, C): weighted CE, Dice, both.

Valid pixels are those with 0 <= label < num_classes; every other pixel (the VOC void label
255 included) adds nothing to the loss and receives zero gradient. Pixel weights follow the
chapter, per image: with n_c valid pixels of class c and tot valid pixels in that image,
w_c = (tot - n_c) / tot, so rare classes weigh more.
"""
from __future__ import annotations

import keras
from keras import ops

from voc import NUM_CLASSES


def _valid_onehot_and_weights(y_true, num_classes: int):
    """One-hot labels that are zero at invalid pixels, and each pixel's class weight.

    Returns onehot (B, H, W, C) float32 and weight (B, H, W) float32 (0 at invalid pixels).
    """
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == 4:  # (B, H, W, 1) from some pipelines
        labels = ops.squeeze(labels, axis=-1)
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    onehot = ops.one_hot(ops.where(valid, labels, 0), num_classes) * ops.cast(valid, "float32")[..., None]
    n_c = ops.sum(onehot, axis=(1, 2))  # (B, C)
    tot = ops.sum(n_c, axis=-1, keepdims=True)  # (B, 1)
    w_c = (tot - n_c) / ops.maximum(tot, 1.0)  # (B, C)
    weight = ops.sum(onehot * w_c[:, None, None, :], axis=-1)  # (B, H, W)
    return onehot, weight


def weighted_ce(onehot, weight, logits):
    """Sum over valid pixels of weight x softmax cross-entropy / valid pixels in the batch."""
    ce = -ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1)  # (B, H, W), 0 when invalid
    return ops.sum(weight * ce) / ops.maximum(ops.sum(onehot), 1.0)


def weighted_dice(onehot, weight, logits):
    """1 - (2 I + 1) / (U + 1), I = sum w p t, U = sum w (p + t), over valid pixels and classes."""
    valid = ops.sum(onehot, axis=-1, keepdims=True)  # (B, H, W, 1), 1 where valid
    p = ops.softmax(logits, axis=-1) * valid
    w = weight[..., None]
    intersection = ops.sum(w * p * onehot)
    union = ops.sum(w * (p + onehot))
    return 1.0 - (2.0 * intersection + 1.0) / (union + 1.0)


class _SegmentationLoss(keras.losses.Loss):
    """Base: a scalar loss over the whole batch; subclasses implement `_loss`."""

    def __init__(self, num_classes: int = NUM_CLASSES, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")  # logits may arrive in float16/bfloat16
        onehot, weight = _valid_onehot_and_weights(y_true, self.num_classes)
        return self._loss(onehot, weight, logits)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="deeplab")
class WeightedCrossEntropy(_SegmentationLoss):
    """Sum over valid pixels of weight x softmax cross-entropy / number of valid pixels in the batch."""

    def __init__(self, num_classes: int = NUM_CLASSES, name: str = "ce_weighted", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    _loss = staticmethod(weighted_ce)


@keras.saving.register_keras_serializable(package="deeplab")
class WeightedDice(_SegmentationLoss):
    """1 - (2 I + 1) / (U + 1), I = sum w p t, U = sum w (p + t), over valid pixels and classes."""

    def __init__(self, num_classes: int = NUM_CLASSES, name: str = "dice", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    _loss = staticmethod(weighted_dice)


@keras.saving.register_keras_serializable(package="deeplab")
class WeightedCrossEntropyDice(_SegmentationLoss):
    """Weighted cross-entropy plus weighted Dice."""

    def __init__(self, num_classes: int = NUM_CLASSES, name: str = "ce_dice", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    @staticmethod
    def _loss(onehot, weight, logits):
        return weighted_ce(onehot, weight, logits) + weighted_dice(onehot, weight, logits)


def ce_weighted_from_logits(num_classes: int = NUM_CLASSES) -> keras.losses.Loss:
    """The chapter's weighted cross-entropy, ignoring invalid labels."""
    return WeightedCrossEntropy(num_classes)


def dice_loss_from_logits(num_classes: int = NUM_CLASSES) -> keras.losses.Loss:
    """The chapter's weighted Dice loss, ignoring invalid labels."""
    return WeightedDice(num_classes)


def ce_dice_loss_from_logits(num_classes: int = NUM_CLASSES) -> keras.losses.Loss:
    """Weighted cross-entropy + weighted Dice, ignoring invalid labels."""
    return WeightedCrossEntropyDice(num_classes)


LOSSES = {"ce_dice": ce_dice_loss_from_logits, "ce": ce_weighted_from_logits, "dice": dice_loss_from_logits}


def get_loss(name: str, num_classes: int = NUM_CLASSES) -> keras.losses.Loss:
    """A loss by its train.py name: ce_dice, ce or dice."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name](num_classes)
