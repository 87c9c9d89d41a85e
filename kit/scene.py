"""A top-down world of floor and obstacles, and what a pinhole camera on a vehicle sees of it.

The "driving scene" of the synthetic data (kit/synthetic.py) and the closed-loop simulation
(kit/simulation.py, simulate.py) both come from here, so a model trained on the one is driven
in the other through the same camera:

    world = scene.random_world(rng)
    image, mask = scene.render(world, (0.0, 0.0, 0.0), scene.CAMERA, (128, 128), rng,
                               synthetic.driving_colour, synthetic.driving_texture)  # pose (x, y, yaw)

Obstacles stand on the floor as vertical prisms: boxes (rotated rectangles), cylinders and
people-like posts (thin tall cylinders). `render` casts one ray per pixel centre and keeps the
nearest hit: the floor, an obstacle's side or top, or nothing (the sky, above the horizon).
The mask holds VOC class indices (0, background, for floor and sky), exactly, with no void
band. Pure NumPy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kit import ground
from kit import voc

# The camera of the simulated vehicle: 0.6 m up, 35 degrees down, 100 degrees across. With a
# square frame the bottom row sees the ground 5 cm ahead of the base and the horizon lies a
# fifth of the way down, so the 4 m grid ahead is seen from 0.05 m out.
CAMERA = ground.Camera(height=0.6, pitch=35.0, hfov=100.0)

# What each kind of obstacle is in VOC's classes (and so what the navigation costs make of it):
# posts are people; boxes and cylinders are clutter (chairs, potted plants), which the
# adventurous profile may push through and the safe one may not.
KINDS = ("box", "cylinder", "post")  # World.kind indexes this
KIND_CLASSES = {"box": voc.CLASS_NAMES.index("chair"), "cylinder": voc.CLASS_NAMES.index("pottedplant"),
                "post": voc.CLASS_NAMES.index("person")}


@dataclass(frozen=True)
class World:
    """Obstacles on an endless floor, as arrays (one row per obstacle).

    kind: (N,) index into KINDS (0 box, 1 cylinder, 2 post);
    centre: (N, 2) x, y in metres; size: (N, 2) box half-length and half-width, or radius
    twice for round ones; yaw: (N,) radians (boxes); top: (N,) height in metres; cls: (N,) VOC class.
    """

    kind: np.ndarray
    centre: np.ndarray
    size: np.ndarray
    yaw: np.ndarray
    top: np.ndarray
    cls: np.ndarray
    floor: tuple  # (base RGB (3,), tile size in m, tile contrast) of the floor's look
    sky: np.ndarray  # (3,) RGB above the horizon

    def __len__(self) -> int:
        return len(self.kind)


_BOX, _CYLINDER, _POST = (KINDS.index(k) for k in KINDS)


def random_world(rng: np.random.Generator, length: float = 14.0, half_width: float = 2.5, start_clear: float = 1.2,
                 density: float = 0.22) -> World:
    """Obstacles scattered over x in [start_clear, length], y in [-half_width, half_width].

    density: obstacles per square metre (0.22 leaves gaps of about a metre on average, some
    narrower than the vehicle, so a planner has to choose). The first `start_clear` metres are
    empty, where the vehicle starts.
    """
    area = (length - start_clear) * 2 * half_width
    n = int(rng.poisson(density * area))
    kinds = rng.choice(3, size=n, p=[0.4, 0.35, 0.25])
    centre = np.stack([rng.uniform(start_clear, length, n), rng.uniform(-half_width, half_width, n)], axis=1)
    size = np.empty((n, 2))
    top = np.empty(n)
    for i, k in enumerate(kinds):
        if k == _BOX:
            size[i] = rng.uniform(0.15, 0.4, 2)
            top[i] = rng.uniform(0.3, 0.9)
        elif k == _CYLINDER:
            size[i] = rng.uniform(0.15, 0.3)
            top[i] = rng.uniform(0.4, 0.8)
        else:
            size[i] = rng.uniform(0.1, 0.15)
            top[i] = rng.uniform(1.5, 1.9)
    cls = np.array([KIND_CLASSES[KINDS[k]] for k in kinds], np.int64).reshape(n)
    grey = rng.uniform(95, 165)
    floor_rgb = grey + rng.uniform(-18, 18, 3)
    return World(kind=kinds.astype(np.int64), centre=centre, size=size, yaw=rng.uniform(0, np.pi, n), top=top,
                 cls=cls, floor=(floor_rgb, float(rng.uniform(0.3, 0.7)), float(rng.uniform(8, 22))),
                 sky=rng.uniform(150, 230, 3))


def footprint_distance(world: World, x: float, y: float) -> np.ndarray:
    """(N,) distance in metres from ground point (x, y) to each obstacle's footprint (0 inside)."""
    if len(world) == 0:
        return np.zeros(0)
    d = np.array([x, y]) - world.centre  # (N, 2)
    round_ = np.hypot(d[:, 0], d[:, 1]) - world.size[:, 0]
    c, s = np.cos(world.yaw), np.sin(world.yaw)
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)  # box frame
    outside = np.maximum(np.abs(local) - world.size, 0.0)
    box = np.hypot(outside[:, 0], outside[:, 1])
    return np.maximum(np.where(world.kind == _BOX, box, round_), 0.0)


def _rays(camera: ground.Camera, pose: tuple[float, float, float], size: tuple[int, int]):
    """World-frame origin (3,) and per-pixel ray directions (H*W, 3), unnormalised, for a camera at pose."""
    width, height = size
    fx, fy, cx, cy = camera.matrix(width, height)
    v, u = np.mgrid[0:height, 0:width]
    a, b = ((u - cx) / fx).ravel(), ((v - cy) / fy).ravel()
    s, c = math.sin(math.radians(camera.pitch)), math.cos(math.radians(camera.pitch))
    forward, left, up = c - b * s, -a, -(b * c + s)  # base frame, as ground.Camera.pixel_to_ground
    px, py, yaw = pose
    cy_, sy_ = math.cos(yaw), math.sin(yaw)
    d = np.stack([cy_ * forward - sy_ * left, sy_ * forward + cy_ * left, up], axis=1)
    return np.array([px, py, camera.height]), d


def _hit(o: np.ndarray, d: np.ndarray, t0: np.ndarray, t1: np.ndarray, top: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter where rays entering a vertical prism over [t0, t1] (its 2-D span) first meet
    it between z = 0 and z = top, or inf: the side at entry, else the top face if the ray comes
    down onto it inside the span; and whether it is the top face."""
    t_in = np.maximum(t0, 0.0)
    z_in = o[2] + t_in * d[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_top = np.where(d[:, 2] < 0, (top - o[2]) / d[:, 2], np.inf)
    side = (t1 >= t_in) & (z_in >= 0) & (z_in <= top)
    onto = (t1 >= t_in) & (z_in > top) & (t_top <= t1)
    return np.where(side, t_in, np.where(onto, t_top, np.inf)), onto & ~side


def render(world: World, pose: tuple[float, float, float], camera: ground.Camera, size: tuple[int, int],
           rng: np.random.Generator, colour_of: Callable[[int], np.ndarray], texture_of=None,
           max_range: float | None = None, with_image: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """What the camera on a vehicle at pose (x, y, yaw) sees: (H, W, 3) uint8 image, (H, W) uint8 mask.

    max_range: leave out obstacles farther than this many metres (the frame is then exact for
    everything nearer, which is all a ground grid of that reach needs; None: all of them).
    with_image: False skips the shading and returns (None, mask), for a segmenter that reads masks.

    colour_of(class index) -> (3,) RGB base colour; texture_of(class index, h, w) -> (H, W) pattern
    in [0, 1] (kit/synthetic.py passes its class looks, so obstacles look like that data's
    objects). `rng` adds lighting and sensor noise.
    """
    width, height = size
    o, d = _rays(camera, pose, size)
    n = d.shape[0]
    with np.errstate(divide="ignore"):
        t_floor = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
    nearest, which = t_floor.copy(), np.full(n, -1)  # -1: floor (or sky where t is inf)
    shade = np.ones(n)
    horizontal = np.maximum(d[:, 0] ** 2 + d[:, 1] ** 2, 1e-12)
    heading = np.array([math.cos(pose[2]), math.sin(pose[2])])
    looks_forward = float((d[:, :2] @ heading).min()) >= 0.0  # then nothing behind the camera shows
    for i in range(len(world)):
        rel = o[:2] - world.centre[i]
        reach = float(np.hypot(*world.size[i]))  # the footprint lies within this of its centre
        if (looks_forward and -rel @ heading < -reach) or (max_range is not None
                                                          and float(np.hypot(*rel)) > max_range + reach):
            continue
        if world.kind[i] == _BOX:
            c, s = math.cos(world.yaw[i]), math.sin(world.yaw[i])
            lx, ly = c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1]  # the camera in the box's frame
            dx, dy = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
            ex, ey = world.size[i]
            with np.errstate(divide="ignore", invalid="ignore"):
                ax, bx = (-ex - lx) / dx, (ex - lx) / dx
                ay, by = (-ey - ly) / dy, (ey - ly) / dy
            near_x, near_y = np.fmin(ax, bx), np.fmin(ay, by)
            t0, t1 = np.fmax(near_x, near_y), np.fmin(np.fmax(ax, bx), np.fmax(ay, by))
            # Light on the side hit: faces turned toward the camera are brighter.
            face = np.where(near_x > near_y, np.abs(dx), np.abs(dy)) / np.sqrt(horizontal)
        else:
            r = world.size[i, 0]
            b = rel @ d[:, :2].T  # (n,)
            disc = b * b - horizontal * (rel @ rel - r * r)
            root = np.sqrt(np.maximum(disc, 0.0))
            t0 = np.where(disc >= 0, (-b - root) / horizontal, np.inf)
            t1 = np.where(disc >= 0, (-b + root) / horizontal, -np.inf)
            face = np.full(n, 0.85)
        t, top_hit = _hit(o, d, t0, t1, world.top[i])
        closer = t < nearest
        nearest[closer], which[closer] = t[closer], i
        shade[closer] = np.where(top_hit[closer], 1.1, 0.65 + 0.35 * face[closer])
    mask = np.zeros(n, np.uint8)
    obstacle = which >= 0
    mask[obstacle] = world.cls[which[obstacle]]
    if not with_image:
        return None, mask.reshape(height, width)
    image = np.empty((n, 3))
    # The floor: square tiles in world coordinates, so they move with the vehicle as a real floor does.
    base, tile, contrast = world.floor
    floor = (which < 0) & np.isfinite(nearest)
    hx, hy = o[0] + nearest[floor] * d[floor, 0], o[1] + nearest[floor] * d[floor, 1]
    checker = (np.floor(hx / tile) + np.floor(hy / tile)) % 2
    image[floor] = base[None, :] + (contrast * (checker - 0.5))[:, None]
    sky = ~obstacle & ~floor
    rows = np.repeat(np.arange(height), width)[sky] / height
    image[sky] = world.sky[None, :] * (0.8 + 0.4 * rows[:, None])
    for cls in np.unique(mask[obstacle]):
        pixels = mask == cls
        pattern = texture_of(int(cls), height, width).ravel()[pixels] if texture_of else np.ones(pixels.sum())
        colour = colour_of(int(cls)) * rng.uniform(0.9, 1.1)
        image[pixels] = colour[None, :] * (0.6 + 0.4 * pattern[:, None]) * shade[pixels, None]
    image *= rng.uniform(0.85, 1.15)  # exposure
    image += rng.normal(0.0, 6.0, image.shape)
    return (np.clip(image, 0, 255).astype(np.uint8).reshape(height, width, 3), mask.reshape(height, width))
