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


def _labels(y_true, num_classes: int):
    """(B, H, W) int32 labels with invalid pixels set to class 0, and (B, H, W) float32 1 where valid."""
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == 4:  # (B, H, W, 1) from some pipelines
        labels = ops.squeeze(labels, axis=-1)
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    return ops.where(valid, labels, 0), ops.cast(valid, "float32")


def _frequency_weights(n_c):
    """(tot - n_c) / tot per row of counts (N, C), and 1 for rows where at most one class is present."""
    tot = ops.sum(n_c, axis=-1, keepdims=True)  # (N, 1)
    w_c = (tot - n_c) / ops.maximum(tot, 1.0)
    present = ops.sum(ops.cast(n_c > 0, "float32"), axis=-1, keepdims=True)
    return ops.where(present > 1.0, w_c, ops.ones_like(w_c))


def _weights(labels, valid, num_classes: int, mode: str, dataset_weights=None):
    """(B, H, W) float32 weight of every pixel (0 at invalid ones), from clean labels and the valid mask."""
    if mode == "none":
        return valid
    if mode == "dataset":
        if dataset_weights is None:
            raise ValueError("class_weights='dataset' needs the data set's class weights")
        w_c = ops.convert_to_tensor(dataset_weights, "float32")[None, :]  # (1, C)
    elif mode in ("image", "batch"):
        flat = ops.reshape(labels, (ops.shape(labels)[0], -1))  # (B, H*W)
        counts = ops.bincount(flat, weights=ops.reshape(valid, ops.shape(flat)), minlength=num_classes)  # (B, C)
        if mode == "batch":
            counts = ops.sum(counts, axis=0, keepdims=True)  # (1, C)
        w_c = _frequency_weights(ops.cast(counts, "float32"))
    else:
        raise ValueError(f"unknown class weighting {mode!r}; choose from {CLASS_WEIGHTS}")
    w_c = ops.broadcast_to(w_c, (ops.shape(labels)[0], num_classes))  # (B, C)
    flat = ops.reshape(labels, (ops.shape(labels)[0], -1))
    return ops.reshape(ops.take_along_axis(w_c, flat, axis=1), ops.shape(labels)) * valid


def pixel_weights(y_true, mode: str = "image", dataset_weights=None, num_classes: int = NUM_CLASSES):
    """(B, H, W) float32 weight of every pixel of labels (B, H, W) under a class-weight mode (0 where invalid)."""
    labels, valid = _labels(y_true, num_classes)
    return _weights(labels, valid, num_classes, mode, dataset_weights)


# Both losses are sums over pixels of a function of the pixel's cross-entropy ce = -log p_label,
# so one fused softmax cross-entropy kernel serves both (TensorFlow's computes the loss and its
# gradient, softmax - one-hot, in one pass over the (B, H, W, C) logits). Dice's intersection
# sum w p t is sum w p_label = sum w exp(-ce), and its union sum w (p + t) is 2 sum w, since the
# probabilities of a valid pixel sum to 1 (and the union's gradient is 0).

def weighted_ce(ce, weight, valid):
    """Sum over valid pixels of weight x softmax cross-entropy / valid pixels in the batch.
    ce, weight, valid: (B, H, W)."""
    return ops.sum(weight * ce) / ops.maximum(ops.sum(valid), 1.0)


def weighted_dice(ce, weight, valid):
    """1 - (2 I + 1) / (U + 1), I = sum w p t, U = sum w (p + t), over valid pixels and classes,
    from each pixel's cross-entropy (p_label = exp(-ce)). ce, weight, valid: (B, H, W)."""
    del valid  # weight is already 0 at invalid pixels
    intersection = ops.sum(weight * ops.exp(-ce))
    union = 2.0 * ops.sum(weight)
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
        labels, valid = _labels(y_true, self.num_classes)
        weight = _weights(labels, valid, self.num_classes, self.class_weights, self.dataset_weights)

        def loss_of(logits):  # (B, H, W, C) -> scalar
            ce = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)  # (B, H, W)
            return self._loss(ce, weight, valid)

        if not self.aux_weight:
            # Slicing (B, H, W, C) to itself would still copy it, and its gradient again.
            return loss_of(y_pred if y_pred.shape[-1] == self.num_classes else y_pred[..., : self.num_classes])
        return loss_of(y_pred[..., : self.num_classes]) + self.aux_weight * loss_of(y_pred[..., self.num_classes:])

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
    def _loss(ce, weight, valid):
        return weighted_ce(ce, weight, valid) + weighted_dice(ce, weight, valid)


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
