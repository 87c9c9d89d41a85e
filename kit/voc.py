"""PASCAL VOC 2012 constants: the one home for VOC's class names, colours and ignore label.

Every other module takes VOC's class count, ignore label and palette from here (through
data.ClassTable.voc() where a data set's own classes may take their place), so a literal
21 or 255 anywhere else is a bug.
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES: int = len(CLASS_NAMES)
# VOC marks object boundaries and "difficult" regions with 255; they count for nothing.
IGNORE_LABEL: int = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC devkit's bit-interleaved colour map as an (n, 3) uint8 array.

    Bit k of the index goes to bit (7 - k // 3) of channel k % 3 (R, G, B), so the first
    classes get well separated colours and index 255 is (224, 224, 192).
    """
    idx = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for shift in range(8):
        for channel in range(3):
            bit = (idx >> (3 * shift + channel)) & 1
            cmap[:, channel] |= (bit << (7 - shift)).astype(np.uint8)
    return cmap


PALETTE: np.ndarray = voc_colormap()  # (256, 3) uint8
