"""The reference chapter's DeepLab v3, as written there, for speed comparisons only.

It keeps the chapter's structure, bugs included: no ImageNet preprocessing, an ASPP pooling
branch that is upsampled without its conv, conv5 blocks whose shortcut is taken before the
ReLU, and `Lambda` layers for resizing. Never use it for training; `model.py` is the product.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


def _aspp_chapter(x, filters=256, rates=(6, 12, 18)):
    h, w = x.shape[1], x.shape[2]
    pool = layers.GlobalAveragePooling2D(keepdims=True)(x)
    pool = layers.Lambda(lambda t: tf.image.resize(t, (h, w)))(pool)  # no conv: the chapter's bug
    branches = [layers.Conv2D(filters, 1, padding="same", activation="relu")(x)]
    branches += [layers.Conv2D(filters, 3, padding="same", dilation_rate=r, activation="relu")(x) for r in rates]
    x = layers.Concatenate()([pool, *branches])
    x = layers.Conv2D(filters, 1, padding="same")(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _block_chapter(x, filters, rate, projection):
    shortcut = layers.Conv2D(4 * filters, 1)(x) if projection else x
    y = layers.Conv2D(filters, 1, activation="relu")(x)
    y = layers.Conv2D(filters, 3, padding="same", dilation_rate=rate, activation="relu")(y)
    y = layers.Conv2D(4 * filters, 1)(y)
    y = layers.Add()([shortcut, y])  # shortcut before the ReLU of the sum, as in the chapter
    return layers.ReLU()(y)


def build_chapter_deeplabv3(input_shape=(384, 384, 3), num_classes=21) -> keras.Model:
    """The chapter's DeepLab v3 (ResNet-50 to conv4, dilated conv5, ASPP), logits out."""
    inputs = keras.Input(input_shape)
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=inputs)
    x = resnet.get_layer("conv4_block6_out").output
    for b in range(3):
        x = _block_chapter(x, 512, 2, projection=b == 0)
    x = _aspp_chapter(x)
    x = layers.Conv2D(num_classes, 1)(x)
    x = layers.Lambda(lambda t: tf.image.resize(t, input_shape[:2]))(x)
    return keras.Model(inputs, x, name="chapter_deeplabv3")
