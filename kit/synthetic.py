"""Synthetic VOC-format data: scenes a model can learn, for the offline demo and the tests.

Written by `python download_data.py --synthetic`; the tree has the layout of the real
VOC 2012 devkit (data.IMAGES_DIR, palettized data.MASKS_DIR PNGs in VOC's colours,
data.SPLITS_DIR with train.txt, val.txt and trainval.txt), so every script runs on it unchanged.

Two kinds (KINDS): "objects" (the default) paints flat shapes of a few VOC classes over a
textured background; "driving" renders a floor with boxes, cylinders and people-like posts
through the simulated vehicle's camera (kit/scene.py), the scenes simulate.py drives in.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from kit import data
from kit import scene
from kit.voc import CLASS_NAMES, IGNORE_LABEL

# A handful of classes a small vehicle meets; each has its own shape, colour and texture.
DEFAULT_CLASSES: tuple[str, ...] = ("car", "person", "dog", "bicycle", "chair", "pottedplant")
SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "hexagon")
TEXTURES = ("stripes", "checker", "dots", "solid")
KINDS = ("objects", "driving")
DRIVING_SIZE = 160  # square driving frames: the demo's 160 px resize is then no resize at all


def class_appearance(class_index: int) -> dict:
    """Shape, base colour and texture that identify an object class (index 1..20)."""
    k = class_index - 1
    hue = (k * 7 % 20) / 20.0  # spread neighbours around the colour wheel
    rgb = np.array(Image.new("HSV", (1, 1), (int(hue * 255), 220, 230)).convert("RGB").getpixel((0, 0)))
    return {"shape": SHAPES[k % len(SHAPES)], "texture": TEXTURES[(k // len(SHAPES)) % len(TEXTURES)],
            "colour": rgb.astype(np.float32)}


def _shape_polygon(shape: str, cx: float, cy: float, rx: float, ry: float) -> list | None:
    if shape == "triangle":
        return [(cx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry)]
    if shape == "diamond":
        return [(cx, cy - ry), (cx + rx, cy), (cx, cy + ry), (cx - rx, cy)]
    if shape == "hexagon":
        angles = np.linspace(0, 2 * np.pi, 7)[:-1]
        return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]
    return None


def _object_mask(shape: str, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """(H, W) bool mask of one object of `shape` inside box = (cx, cy, rx, ry)."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, rx, ry = box
    polygon = _shape_polygon(shape, cx, cy, rx, ry)
    if polygon is not None:
        draw.polygon(polygon, fill=1)
    elif shape == "ellipse":
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    else:
        draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    return np.asarray(canvas, dtype=bool)


def _texture(texture: str, h: int, w: int, period: float, phase: float) -> np.ndarray:
    """(H, W) float pattern in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if texture == "stripes":
        return (np.sin((xx + yy + phase) * 2 * np.pi / period) > 0).astype(np.float32)
    if texture == "checker":
        return (((xx + phase) // (period / 2) + (yy // (period / 2))) % 2).astype(np.float32)
    if texture == "dots":
        d = np.hypot((xx + phase) % period - period / 2, yy % period - period / 2)
        return (d < period / 4).astype(np.float32)
    return np.ones((h, w), np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A dull, noisy, gradient-and-stripe background, (H, W, 3) float in [0, 255]."""
    base = rng.uniform(60, 190, 3)
    grey = base.mean()
    base = grey + 0.35 * (base - grey)  # low saturation, so objects stand out by colour
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(h, w)
    stripes = 12 * np.sin((xx * np.cos(angle + 1) + yy * np.sin(angle + 1)) / rng.uniform(6, 20))
    image = base[None, None, :] + (40 * ramp + stripes)[..., None]
    return image + rng.normal(0, 10, (h, w, 3))


def render_scene(rng: np.random.Generator, class_indices: list[int], size: tuple[int, int],
                 max_objects: int = 3, void_width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene.

    Args:
        size: (width, height) in pixels.
    Returns:
        image (H, W, 3) uint8 and label (H, W) uint8 with 0 background, class indices for
        objects (later objects occlude earlier ones) and 255 in a band along every boundary.
    """
    w, h = size
    image = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.choice(class_indices))
        look = class_appearance(cls)
        rx, ry = (rng.uniform(0.12, 0.3) * min(w, h) * rng.uniform(0.8, 1.25) for _ in range(2))
        box = (rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h, rx, ry)
        mask = _object_mask(look["shape"], (w, h), box)
        if not mask.any():
            continue
        pattern = _texture(look["texture"], h, w, period=rng.uniform(8, 14), phase=rng.uniform(0, 10))
        colour = look["colour"] * rng.uniform(0.85, 1.15)
        fill = colour[None, None, :] * (0.6 + 0.4 * pattern[..., None]) + rng.normal(0, 6, (h, w, 3))
        image[mask] = fill[mask]
        label[mask] = cls
    # VOC draws a void band along object outlines; mark pixels next to a label change.
    edges = np.zeros((h, w), bool)
    edges[:, 1:] |= label[:, 1:] != label[:, :-1]
    edges[1:, :] |= label[1:, :] != label[:-1, :]
    if void_width > 0 and edges.any():
        band = Image.fromarray(edges.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * void_width - 1))
        label[np.asarray(band) > 0] = IGNORE_LABEL
    return np.clip(image, 0, 255).astype(np.uint8), label


def driving_colour(class_index: int) -> np.ndarray:
    """(3,) RGB base colour of a class in the driving scenes: the objects kind's colour for it."""
    return class_appearance(class_index)["colour"]


def driving_texture(class_index: int, h: int, w: int) -> np.ndarray:
    """(H, W) pattern in [0, 1] of a class in the driving scenes: the objects kind's texture for it."""
    return _texture(class_appearance(class_index)["texture"], h, w, period=10.0, phase=0.0)


def render_driving_scene(rng: np.random.Generator, size: tuple[int, int] = (DRIVING_SIZE, DRIVING_SIZE),
                         camera=scene.CAMERA) -> tuple[np.ndarray, np.ndarray]:
    """One driving frame: a random world seen from a random pose in it, through `camera` with its
    height and pitch jittered a little (a vehicle bounces). Returns (H, W, 3) uint8 image and
    (H, W) uint8 exact mask (VOC class indices, no void band)."""
    world = scene.random_world(rng, start_clear=0.0, density=float(rng.uniform(0.15, 0.35)))
    pose = (float(rng.uniform(-1.0, 10.0)), float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-0.6, 0.6)))
    jittered = dataclasses.replace(camera, height=camera.height * float(rng.uniform(0.9, 1.1)),
                                   pitch=camera.pitch + float(rng.uniform(-4.0, 4.0)))
    return scene.render(world, pose, jittered, size, rng, driving_colour, driving_texture)


def generate_voc_tree(voc_root: str | Path, num_train: int = 200, num_val: int = 100, seed: int = 0,
                      classes: tuple[str, ...] = DEFAULT_CLASSES, min_size: int = 200,
                      max_size: int = 500, grayscale_every: int = 15, progress: bool = True,
                      kind: str = "objects") -> Path:
    """Write a complete VOC-format tree under `voc_root` (the `VOC2012` folder); deterministic for a seed.

    kind "objects": shapes of `classes`, sizes from min_size to max_size, every
    `grayscale_every`-th image saved as a single-channel JPEG, as a few VOC images are.
    kind "driving": DRIVING_SIZE square frames of render_driving_scene (its classes are
    scene.KIND_CLASSES; `classes`, the sizes and grayscale_every do not apply).
    Returns the root.
    """
    if kind not in KINDS:
        raise data.DataError(f"unknown synthetic kind {kind!r}; kinds are {list(KINDS)}")
    unknown = [c for c in classes if c not in CLASS_NAMES[1:]]
    if unknown:
        raise data.DataError(f"unknown VOC classes {unknown}; choose from {CLASS_NAMES[1:]}")
    if not 0 < min_size <= max_size:
        raise data.DataError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
    root = Path(voc_root)
    jpeg_dir, seg_dir, sets_dir = root / data.IMAGES_DIR, root / data.MASKS_DIR, root / data.SPLITS_DIR
    for d in (jpeg_dir, seg_dir, sets_dir):
        d.mkdir(parents=True, exist_ok=True)
    classes_table = data.ClassTable.voc()
    class_indices = [CLASS_NAMES.index(c) for c in classes]
    ids = [f"2012_{i:06d}" for i in range(num_train + num_val)]
    void_width = 2 if max_size < 300 else 3
    for i, image_id in enumerate(tqdm(ids, desc="synthetic VOC", unit="img", disable=not progress)):
        # One generator per image, so an image does not depend on how many came before it.
        rng = np.random.default_rng([seed, i])
        if kind == "driving":
            image, label = render_driving_scene(rng)
            Image.fromarray(image).save(jpeg_dir / f"{image_id}.jpg", quality=92)
            classes_table.save_mask(label, seg_dir / f"{image_id}.png")
            continue
        size = (int(rng.integers(min_size, max_size + 1)), int(rng.integers(min_size, max_size + 1)))
        image, label = render_scene(rng, class_indices, size, void_width=void_width)
        picture = Image.fromarray(image)
        if grayscale_every and i % grayscale_every == grayscale_every // 2:
            picture = picture.convert("L")
        picture.save(jpeg_dir / f"{image_id}.jpg", quality=92)
        classes_table.save_mask(label, seg_dir / f"{image_id}.png")
    splits = {"train": ids[:num_train], "val": ids[num_train:], "trainval": ids}
    for name, members in splits.items():
        (sets_dir / f"{name}.txt").write_text("".join(f"{m}\n" for m in members))
    return root
