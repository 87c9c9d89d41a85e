"""Segmentation losses on int labels (B, H, W) and logits (B, H, W, C): weighted CE, Dice, both.

Valid pixels are those with 0 <= label < num_classes; every other pixel (the VOC void label
255 included) adds nothing to the loss and receives zero gradient.

Class weights (`class_weights`), with n_c valid pixels of class c out of tot:
    image    the chapter's, per image: w_c = (tot - n_c) / tot, so rarer classes weigh more;
    batch    the same formula over the whole batch;
    dataset  w_c = 1 - f_c, f_c the class's share of all training pixels (measured once by
             train.py and saved in config.json);
    none     every valid pixel weighs 1.
Where only one class is present (an image of only background, common after scale jitter),
the formula gives that class weight 0 and the loss would be exactly 0, training nothing; such
images (or batches) weigh 1 per pixel instead.

Dice smoothing: 1 - (2 I + 1) / (U + 1), with I = sum w p t and U = sum w (p + t) over the
batch's valid pixels and all classes; the +1 keeps an empty batch (all ignored) at 0 loss
with a finite gradient, and is negligible next to a batch's thousands of pixels.

With `aux_weight` > 0 the prediction holds the main logits and an auxiliary head's logits
side by side, (B, H, W, 2C) (model.training_model), and the loss is main + aux_weight * aux.
"""
from __future__ import annotations

import keras
from keras import ops

from kit import config
from kit.voc import NUM_CLASSES

CLASS_WEIGHTS = config.TRAIN["class_weights"].choices


def dataset_class_weights(pixel_counts) -> list[float]:
    """Per-class weights 1 - f_c from a data set's class pixel counts (C,); 1 for a one-class set."""
    counts = [float(c) for c in pixel_counts]
    total = sum(counts)
    if total <= 0 or sum(c > 0 for c in counts) <= 1:
        return [1.0] * len(counts)
    return [1.0 - c / total for c in counts]


def _onehot(y_true, num_classes: int):
    """(B, H, W, C) float32 one-hot labels, all zero at invalid pixels."""
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == 4:  # (B, H, W, 1) from some pipelines
        labels = ops.squeeze(labels, axis=-1)
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    return ops.one_hot(ops.where(valid, labels, 0), num_classes) * ops.cast(valid, "float32")[..., None]


def _frequency_weights(n_c):
    """(tot - n_c) / tot per row of counts (N, C), and 1 for rows where at most one class is present."""
    tot = ops.sum(n_c, axis=-1, keepdims=True)  # (N, 1)
    w_c = (tot - n_c) / ops.maximum(tot, 1.0)
    present = ops.sum(ops.cast(n_c > 0, "float32"), axis=-1, keepdims=True)
    return ops.where(present > 1.0, w_c, ops.ones_like(w_c))


def pixel_weights(onehot, mode: str = "image", dataset_weights=None):
    """(B, H, W) float32 weight of every pixel (0 at invalid ones) under a class-weight mode."""
    if mode == "none":
        return ops.sum(onehot, axis=-1)
    if mode == "dataset":
        if dataset_weights is None:
            raise ValueError("class_weights='dataset' needs the data set's class weights")
        w_c = ops.convert_to_tensor(dataset_weights, "float32")[None, :]  # (1, C)
    elif mode == "image":
        w_c = _frequency_weights(ops.sum(onehot, axis=(1, 2)))  # (B, C)
    elif mode == "batch":
        w_c = _frequency_weights(ops.sum(onehot, axis=(0, 1, 2))[None, :])  # (1, C)
    else:
        raise ValueError(f"unknown class weighting {mode!r}; choose from {CLASS_WEIGHTS}")
    return ops.sum(onehot * w_c[:, None, None, :], axis=-1)


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

    def __init__(self, num_classes: int = NUM_CLASSES, name: str | None = None, class_weights: str = "image",
                 dataset_weights=None, aux_weight: float = 0.0, **kwargs):
        super().__init__(name=name, **kwargs)
        if class_weights not in CLASS_WEIGHTS:
            raise ValueError(f"unknown class weighting {class_weights!r}; choose from {CLASS_WEIGHTS}")
        if class_weights == "dataset" and (dataset_weights is None or len(dataset_weights) != num_classes):
            raise ValueError(f"class_weights='dataset' needs {num_classes} dataset_weights, got {dataset_weights}")
        self.num_classes, self.class_weights, self.aux_weight = num_classes, class_weights, float(aux_weight)
        self.dataset_weights = None if dataset_weights is None else [float(w) for w in dataset_weights]

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")  # logits may arrive in float16/bfloat16
        onehot = _onehot(y_true, self.num_classes)
        weight = pixel_weights(onehot, self.class_weights, self.dataset_weights)
        loss = self._loss(onehot, weight, y_pred[..., : self.num_classes])
        if self.aux_weight:
            loss = loss + self.aux_weight * self._loss(onehot, weight, y_pred[..., self.num_classes:])
        return loss

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "class_weights": self.class_weights,
                "dataset_weights": self.dataset_weights, "aux_weight": self.aux_weight}


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


def ce_weighted_from_logits(num_classes: int = NUM_CLASSES, **kwargs) -> keras.losses.Loss:
    """The chapter's weighted cross-entropy, ignoring invalid labels."""
    return WeightedCrossEntropy(num_classes, **kwargs)


def dice_loss_from_logits(num_classes: int = NUM_CLASSES, **kwargs) -> keras.losses.Loss:
    """The chapter's weighted Dice loss, ignoring invalid labels."""
    return WeightedDice(num_classes, **kwargs)


def ce_dice_loss_from_logits(num_classes: int = NUM_CLASSES, **kwargs) -> keras.losses.Loss:
    """Weighted cross-entropy + weighted Dice, ignoring invalid labels."""
    return WeightedCrossEntropyDice(num_classes, **kwargs)


LOSSES = {"ce_dice": ce_dice_loss_from_logits, "ce": ce_weighted_from_logits, "dice": dice_loss_from_logits}


def get_loss(name: str, num_classes: int = NUM_CLASSES, class_weights: str = "image", dataset_weights=None,
             aux_weight: float = 0.0) -> keras.losses.Loss:
    """A loss by its train.py name (ce_dice, ce or dice), with its class weighting and auxiliary weight."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name](num_classes, class_weights=class_weights, dataset_weights=dataset_weights,
                        aux_weight=aux_weight)
