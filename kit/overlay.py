"""Class colours drawn over an image: the overlays predict.py writes for images and video frames.

The blend runs on the video writer's thread (kit/video.py), where it competes with the model,
so it is OpenCV's saturating uint8 arithmetic rather than NumPy floats.
"""
from __future__ import annotations

import cv2
import numpy as np

from kit.data import ClassTable
from kit.errors import ConfigError


def check_alpha(value: float) -> float:
    """`value` if it is an opacity in [0, 1]; else a ConfigError saying so. Outside it, the
    blend's weights (1 - alpha, alpha) would leave [0, 1] and saturate the picture."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1] (0: the image alone, 1: the class colours alone), got {value}")
    return float(value)


def blend(image: np.ndarray, mask: np.ndarray, classes: ClassTable, alpha: float) -> np.ndarray:
    """(H, W, 3) RGB uint8: `classes`' colours blended at opacity `alpha` over `image` (H, W, 3)
    wherever `mask` (H, W) predicts a class other than class 0, which keeps the image's pixels."""
    if image.dtype != np.uint8:  # read_image gives float32 in [0, 255]
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)  # (H, W)
    blended = cv2.addWeighted(np.ascontiguousarray(image), 1.0 - alpha, classes.colourize(mask), alpha, 0.0)
    cv2.copyTo(image, (mask == 0).view(np.uint8), blended)  # class 0 keeps the image's own pixels
    return blended
