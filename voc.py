"""PASCAL VOC 2012 constants and palette tools: the one home for class names, colours and labels.

Every other module imports its class count, ignore label and palette from here, so a literal
21 or 255 anywhere else is a bug.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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


def rgb_image_from_palette(image, palette: np.ndarray = PALETTE) -> np.ndarray:
    """A PIL palettized image or an (H, W) index array to an (H, W, 3) uint8 RGB array.

    A PIL image is coloured with its own palette when it has one, else with `palette`.
    """
    if isinstance(image, Image.Image):
        if image.mode == "P" and image.getpalette() is not None:
            own = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
            palette = np.zeros((256, 3), np.uint8)
            palette[: len(own)] = own[:256]
        image = np.asarray(image)
    index = np.asarray(image)
    if index.ndim != 2:
        raise ValueError(f"expected an (H, W) index image, got shape {index.shape}")
    if index.size and int(index.max()) >= len(palette):
        raise ValueError(f"index {int(index.max())} is outside a palette of {len(palette)} colours")
    return np.asarray(palette, dtype=np.uint8)[index]


def palettize(rgb_image: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """Map an (H, W, 3) image whose colours all come from `palette` to (H, W) uint8 indices.

    Vectorized: colours are packed into 24-bit integers and looked up with a sorted search.
    A colour that repeats in the palette maps to its first index.

    Raises:
        ValueError: a colour is not in the palette; the message names a pixel and the colour.
    """
    rgb = np.asarray(rgb_image)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    # np.unique keeps the first occurrence's index, so duplicates resolve to the lowest index.
    uniq, first = np.unique(pal_codes, return_index=True)
    pos = np.clip(np.searchsorted(uniq, codes), 0, len(uniq) - 1)
    found = uniq[pos] == codes
    if not found.all():
        row, col = (int(v) for v in np.argwhere(~found)[0])
        colour = tuple(int(c) for c in rgb[row, col])
        raise ValueError(f"colour {colour} at pixel (row={row}, col={col}) is not in the palette")
    if len(pal) > 256:
        raise ValueError(f"a palette of {len(pal)} colours does not fit uint8 indices")
    return first[pos].astype(np.uint8)


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write an (H, W) uint8 label map as a palettized PNG with the VOC palette, as VOC does."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8))  # mode "L"
    image.putpalette(PALETTE.reshape(-1).tolist())  # turns "L" into "P", indices unchanged
    image.save(path, format="PNG")


def load_mask(path: str | Path) -> np.ndarray:
    """Read a VOC label PNG as (H, W) uint8 class indices (not colours).

    Palettized and single-channel PNGs hold indices directly; an RGB PNG is mapped back
    through the VOC palette.
    """
    with Image.open(path) as image:
        if image.mode in ("P", "L"):
            return np.asarray(image, dtype=np.uint8).copy()
        if image.mode in ("RGB", "RGBA"):
            return palettize(np.asarray(image.convert("RGB")))
        raise ValueError(f"{path}: unsupported label PNG mode {image.mode!r}")
