"""The ground in front of the vehicle: a pinhole camera, inverse perspective mapping (IPM) of a
cost map onto a bird's-eye grid, the grid as ROS OccupancyGrid values and map_server files, and a
planner that scores a fan of arcs of the vehicle's width over it. Pure NumPy, like
kit/navigation.py, which turns the model's probabilities into the cost map this module maps:

    from kit import ground, navigation
    camera = ground.Camera(height=0.6, pitch=35.0, hfov=100.0)
    grid = ground.Grid(length=4.0, width=4.0, cell=0.05)
    projector = ground.Projector(camera, grid, (width, height))   # once per frame size
    cells = projector.project(navigation.cost_map(probs, "safe", costs))   # (rows, cols), NaN unknown
    result = ground.ArcPlanner(grid, "safe").plan(cells)   # curvature, heading_deg, stop, arc_costs
    ground.occupancy(cells)                                # int8 0..100, -1 unknown (nav2 values)
    ground.save_map(cells, grid, "out/frame")              # out/frame.pgm + out/frame.yaml

Frames follow ROS REP 103: the vehicle's base on the ground at the origin, x forward, y left,
z up; the camera sits above the base at `height`, looking forward, tilted down by `pitch`.
The grid covers x in [0, length) and y in [-width/2, width/2); cell (row r, column c) is the
square at y = -width/2 + r * cell, x = c * cell: row-major from the cell at `origin`, +x along
a row, as nav_msgs/OccupancyGrid lays out its data. Curvatures are positive to the left.
"""
from __future__ import annotations

import argparse
import json
import math
import operator
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kit import atomic
from kit import navigation
from kit.errors import KitError

# nav2's occupancy values (nav2_util/occ_grid_values.hpp).
FREE, OCCUPIED, UNKNOWN = 0, 100, -1
# What nav2's map_saver writes in trinary mode (nav2_map_server map_io.cpp): cells of at most
# 25 are free (254), of at least 65 occupied (0), the rest unknown (205). The YAML's thresholds
# then have to put 205 between them: (255 - 205) / 255 = 0.196 is not below a free_thresh of
# 0.196 (ROS 1's map_saver and nav2 since PR 5278), whereas nav2's older 0.25 reloads unknown
# cells as free.
MAP_FREE_SHADE, MAP_OCCUPIED_SHADE, MAP_UNKNOWN_SHADE = 254, 0, 205
MAP_OCCUPIED_THRESH, MAP_FREE_THRESH = 0.65, 0.25  # where cells are cut into free, unknown, occupied
YAML_OCCUPIED_THRESH, YAML_FREE_THRESH = 0.65, 0.196  # what the YAML says, so the image reads back the same
MAP_MODES = ("trinary", "raw")
# Grids larger than this many cells a side are almost surely a unit mistake (cm for m).
MAX_CELLS_A_SIDE = 2000


class GroundError(KitError, ValueError):
    """A camera, grid or planner setting that cannot work; the message names the value."""


@dataclass(frozen=True)
class Camera:
    """A pinhole camera above the vehicle's base, looking forward, pitched down.

    Either `hfov` (square pixels, principal point at the image centre) or `intrinsics`
    (fx, fy, cx, cy in pixels, for frames of `calibrated_size` (width, height); other frame
    sizes scale them) describes the lens. Frames are taken as rectified (no distortion).
    """

    height: float  # metres above the ground
    pitch: float  # degrees below the horizon (0 looks level, 90 straight down)
    hfov: float | None = None  # degrees across the image width
    intrinsics: tuple[float, float, float, float] | None = None
    calibrated_size: tuple[int, int] | None = None

    def __post_init__(self):
        if not (isinstance(self.height, (int, float)) and self.height > 0 and math.isfinite(self.height)):
            raise GroundError(f"camera height must be a positive number of metres, got {self.height!r}")
        if not -90.0 < self.pitch < 90.0:
            raise GroundError(f"camera pitch must be between -90 and 90 degrees (down positive), got {self.pitch!r}")
        if (self.hfov is None) == (self.intrinsics is None):
            raise GroundError("give the camera either a horizontal field of view (--hfov) or intrinsics "
                              "(--calibration), not both or neither")
        if self.hfov is not None and not 0.0 < self.hfov < 180.0:
            raise GroundError(f"horizontal field of view must be between 0 and 180 degrees, got {self.hfov!r}")
        if self.intrinsics is not None:
            fx, fy, _, _ = self.intrinsics
            if not (fx > 0 and fy > 0) or self.calibrated_size is None or min(self.calibrated_size) < 1:
                raise GroundError(f"camera intrinsics need fx, fy > 0 and the calibrated image size, got "
                                  f"{self.intrinsics} at {self.calibrated_size}")

    def matrix(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels for frames `width` x `height`; pixel centres at integers."""
        if self.hfov is not None:
            fx = (width / 2.0) / math.tan(math.radians(self.hfov) / 2.0)
            return fx, fx, (width - 1) / 2.0, (height - 1) / 2.0
        fx, fy, cx, cy = self.intrinsics
        sx, sy = width / self.calibrated_size[0], height / self.calibrated_size[1]
        # Resizing scales pixel edges, so centres move by (c + 0.5) * s - 0.5.
        return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5

    def horizon_row(self, width: int, height: int) -> float:
        """The image row (may be fractional or outside the image) where the ground meets the horizon."""
        _, fy, _, cy = self.matrix(width, height)
        return cy - fy * math.tan(math.radians(self.pitch))

    def pixel_to_ground(self, u: npt.ArrayLike, v: npt.ArrayLike, width: int, height: int
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Ground point (x, y) in metres seen at pixel (u, v); NaN at and above the horizon."""
        fx, fy, cx, cy = self.matrix(width, height)
        a = (np.asarray(u, np.float64) - cx) / fx  # image right, per unit depth
        b = (np.asarray(v, np.float64) - cy) / fy  # image down, per unit depth
        s, c = math.sin(math.radians(self.pitch)), math.cos(math.radians(self.pitch))
        # The ray (c - b s, -a, -(b c + s)) in the base frame meets z = 0 at t = height / (b c + s).
        down = b * c + s
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(down > 1e-9, self.height / down, np.nan)
        return t * (c - b * s), -t * a

    def ground_to_pixel(self, x: npt.ArrayLike, y: npt.ArrayLike, width: int, height: int
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Pixel (u, v) where ground point (x, y) appears; NaN where it is behind the camera."""
        fx, fy, cx, cy = self.matrix(width, height)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        s, c = math.sin(math.radians(self.pitch)), math.cos(math.radians(self.pitch))
        right, down, depth = -y, -x * s + self.height * c, x * c + self.height * s  # camera axes
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.where(depth > 1e-9, depth, np.nan)
            return cx + fx * right / depth, cy + fy * down / depth


def load_calibration(path: str | Path) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """((fx, fy, cx, cy), (width, height)) from a camera calibration file.

    Reads the YAML that ROS's camera_calibration writes (ost.yaml: image_width, image_height,
    camera_matrix: {rows, cols, data: [9 values]}), or a JSON object with the same keys
    (camera_matrix as {"data": [...]} or a flat list "K", as sensor_msgs/CameraInfo names it).
    Distortion is not undone: a warning says so when its coefficients are not all zero.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not a key
    except OSError as err:
        raise GroundError(f"cannot read calibration {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise GroundError(f"calibration {path} is not UTF-8 text ({err.reason} at byte {err.start}): give the "
                          f"ost.yaml that camera_calibration wrote, or a camera_info JSON file") from None
    if path.suffix.lower() == ".json":
        try:
            info = json.loads(text)
            matrix = info["camera_matrix"]["data"] if "camera_matrix" in info else info["K"]
            size = (info["image_width"], info["image_height"])
            distortion = (info["distortion_coefficients"]["data"] if "distortion_coefficients" in info
                          else info.get("D", []))
        except (ValueError, KeyError, TypeError) as err:
            raise GroundError(f"calibration {path} is not a camera_info JSON object (image_width, image_height, "
                              f"camera_matrix.data or K): {err}") from None
    else:
        def field(name):
            found = re.search(rf"^{name}:\s*(\d+)\s*$", text, re.MULTILINE)
            return int(found.group(1)) if found else None

        def block(name):  # the `data: [...]` list of a `name:` mapping, spread over lines or not
            found = re.search(rf"^{name}:\s*\n(?:[ \t]+\w+:.*\n)*?[ \t]+data:\s*\[([^\]]*)\]", text, re.MULTILINE)
            return [float(v) for v in found.group(1).replace("\n", " ").split(",") if v.strip()] if found else None

        try:
            matrix, size, distortion = block("camera_matrix"), (field("image_width"), field("image_height")), \
                block("distortion_coefficients") or []
        except ValueError as err:
            raise GroundError(f"calibration {path}: a matrix holds something that is not a number ({err})") from None
        if matrix is None or None in size:
            raise GroundError(f"calibration {path} is not ROS camera_calibration's YAML: it needs image_width, "
                              f"image_height and camera_matrix with data: [9 numbers]")
    matrix = [float(v) for v in matrix]
    if len(matrix) != 9:
        raise GroundError(f"calibration {path}: camera_matrix has {len(matrix)} values, expected 9 (3x3)")
    if any(float(v) != 0.0 for v in distortion):
        warnings.warn(f"calibration {path} has lens distortion {list(distortion)}, which the ground grid does not "
                      f"undo: feed rectified frames, or expect the grid's edges to bend", RuntimeWarning, stacklevel=2)
    return (matrix[0], matrix[4], matrix[2], matrix[5]), (int(size[0]), int(size[1]))


def parse_size(text: str) -> tuple[float, float]:
    """"4x4" or "4" -> (length forward, width across) in metres, for --grid-size."""
    parts = re.split(r"\s*[xX*]\s*", str(text).strip())
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(v > 0 and math.isfinite(v) for v in values):
        raise GroundError(f"grid size must be LENGTHxWIDTH in metres, e.g. 4x4, got {text!r}")
    return values[0], values[1]


@dataclass(frozen=True)
class Grid:
    """A bird's-eye grid in front of the vehicle: `length` m forward, `width` m across, square cells."""

    length: float = 4.0
    width: float = 4.0
    cell: float = 0.05

    def __post_init__(self):
        if not (self.cell > 0 and math.isfinite(self.cell)):
            raise GroundError(f"grid cell must be a positive number of metres, got {self.cell!r}")
        if not (self.length > 0 and self.width > 0):
            raise GroundError(f"grid size must be positive, got {self.length}x{self.width} m")
        rows, cols = self.shape
        if max(rows, cols) > MAX_CELLS_A_SIDE:
            raise GroundError(f"a {self.length}x{self.width} m grid of {self.cell} m cells has {rows}x{cols} "
                              f"cells (over {MAX_CELLS_A_SIDE} a side): is the cell size in metres?")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows across y, columns along x)."""
        return (max(1, int(round(self.width / self.cell))), max(1, int(round(self.length / self.cell))))

    @property
    def origin(self) -> tuple[float, float, float]:
        """(x, y, yaw) of cell (0, 0)'s outer corner, as OccupancyGrid's info.origin and map_server's YAML."""
        return (0.0, -self.shape[0] * self.cell / 2.0, 0.0)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of every cell centre, each (rows, cols)."""
        rows, cols = self.shape
        x = (np.arange(cols) + 0.5) * self.cell + self.origin[0]
        y = (np.arange(rows) + 0.5) * self.cell + self.origin[1]
        return np.broadcast_to(x[None, :], (rows, cols)), np.broadcast_to(y[:, None], (rows, cols))

    def describe(self) -> dict:
        """The OccupancyGrid's info fields: resolution, width (columns), height (rows), origin."""
        rows, cols = self.shape
        return {"resolution": self.cell, "width": cols, "height": rows, "origin": list(self.origin)}


class Projector:
    """Inverse perspective mapping of (H, W) cost maps onto a Grid, for one camera and frame size.

    Everything geometric is computed once here; `project` is then two gathers and one
    np.maximum.reduceat. A cell takes the highest cost of the pixels whose ground points fall
    in it (an obstacle is never averaged away), and far cells that no pixel centre lands in take
    the pixel their centre projects to. Cells no pixel sees (beyond the image's sides, under its
    bottom edge, or only above the horizon) stay unknown (NaN).

    Raises GroundError when no image row sees the ground (the camera looks above the horizon)
    or no grid cell is in view.
    """

    def __init__(self, camera: Camera, grid: Grid, size: tuple[int, int]):
        width, height = (operator.index(n) for n in size)
        if width < 1 or height < 1:
            raise GroundError(f"frame size must be positive, got {size}")
        self.camera, self.grid, self.size = camera, grid, (width, height)
        horizon = camera.horizon_row(width, height)
        if horizon >= height - 1:
            raise GroundError(f"the camera looks above the horizon: with pitch {camera.pitch:g} deg the horizon is "
                              f"at row {horizon:.1f} of a {height}-row frame, so no pixel sees the ground; "
                              f"tilt it down (a larger --camera-pitch)")
        rows, cols = grid.shape
        # Every pixel's ground point and the cell it falls in.                 # (H, W) each
        v, u = np.mgrid[0:height, 0:width]
        x, y = camera.pixel_to_ground(u, v, width, height)
        with np.errstate(invalid="ignore"):
            col = np.floor((x - grid.origin[0]) / grid.cell)
            row = np.floor((y - grid.origin[1]) / grid.cell)
            inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)  # False where NaN
        cell = (row[inside] * cols + col[inside]).astype(np.int64)
        pixel = np.flatnonzero(inside)
        order = np.argsort(cell, kind="stable")
        cell, self._pixels = cell[order], pixel[order]  # pixels grouped by cell
        first = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]]) if cell.size else np.zeros(0, np.int64)
        self._starts, self._hit_cells = first, cell[first]
        # Every cell centre's pixel, for the far cells that fall between pixel centres.
        cx, cy = grid.centres()
        pu, pv = camera.ground_to_pixel(cx, cy, width, height)
        with np.errstate(invalid="ignore"):
            ui, vi = np.rint(pu), np.rint(pv)
            seen = (ui >= 0) & (ui < width) & (vi >= 0) & (vi < height) & (vi > horizon)
        self._sample_cells = np.flatnonzero(seen)
        self._sample_pixels = (vi[seen] * width + ui[seen]).astype(np.int64)
        visible = np.zeros(rows * cols, bool)
        visible[self._sample_cells] = True
        visible[self._hit_cells] = True
        if not visible.any():
            raise GroundError(f"the {grid.length:g}x{grid.width:g} m grid does not fit the camera's view: none of "
                              f"its cells is seen from {camera.height:g} m at pitch {camera.pitch:g} deg; "
                              f"check --grid-size, --camera-height and --camera-pitch")
        self.visible = visible.reshape(rows, cols)  # (rows, cols) bool: cells the camera sees

    def project(self, cost: npt.ArrayLike) -> np.ndarray:
        """(H, W) cost map in [0, 1] -> (rows, cols) float32 cell costs, NaN where unknown."""
        c = np.asarray(cost, dtype=np.float32)
        if c.shape != (self.size[1], self.size[0]):
            raise ValueError(f"cost map has shape {c.shape} but this projector is for {self.size[1]}x{self.size[0]} "
                             f"frames (H, W)")
        flat = c.ravel()
        out = np.full(self.visible.size, np.nan, np.float32)
        out[self._sample_cells] = flat[self._sample_pixels]
        if self._pixels.size:
            highest = np.maximum.reduceat(flat[self._pixels], self._starts)  # per hit cell
            out[self._hit_cells] = np.fmax(out[self._hit_cells], highest)
        return out.reshape(self.visible.shape)


def occupancy(cells: npt.ArrayLike) -> np.ndarray:
    """Cell costs in [0, 1] (NaN unknown) -> int8 OccupancyGrid values: 0..100, -1 unknown."""
    c = np.asarray(cells, dtype=np.float32)
    known = np.isfinite(c)
    values = np.full(c.shape, UNKNOWN, np.int8)
    values[known] = np.rint(np.clip(c[known], 0.0, 1.0) * OCCUPIED).astype(np.int8)
    return values


def grid_record(cells: npt.ArrayLike, grid: Grid) -> dict:
    """An OccupancyGrid as JSON: info (resolution, width, height, origin) and row-major int data."""
    return {**grid.describe(), "data": occupancy(cells).ravel().tolist()}


def map_image(values: npt.ArrayLike, mode: str = "trinary") -> np.ndarray:
    """OccupancyGrid values (rows, cols) -> the (rows, cols) uint8 image nav2's map_saver writes.

    trinary: free (<= 25) 254, occupied (>= 65) 0, the rest and unknown 205; raw: the value
    itself, unknown 255. The image's top row is the grid's last row (map_server flips rows).
    """
    v = np.asarray(values, dtype=np.int16)
    if mode == "trinary":
        shade = np.full(v.shape, MAP_UNKNOWN_SHADE, np.uint8)
        known = (v >= FREE) & (v <= OCCUPIED)
        shade[known & (v <= round(MAP_FREE_THRESH * 100))] = MAP_FREE_SHADE
        shade[known & (v >= round(MAP_OCCUPIED_THRESH * 100))] = MAP_OCCUPIED_SHADE
    elif mode == "raw":
        shade = np.where((v >= FREE) & (v <= OCCUPIED), v, 255).astype(np.uint8)
    else:
        raise GroundError(f"unknown map mode {mode!r}; modes are {list(MAP_MODES)}")
    return shade[::-1]


def save_map(cells: npt.ArrayLike, grid: Grid, stem: str | Path, mode: str = "trinary") -> tuple[Path, Path]:
    """Write map_server's pair STEM.pgm + STEM.yaml for a grid of cell costs (NaN unknown).

    The YAML names the image relative to itself, as map_saver does; origin is the grid's
    corner in the vehicle's base frame at the moment the frame was taken.
    Returns (pgm path, yaml path).
    """
    from PIL import Image  # here, not at import: a ROS node that only plans never pays for PIL

    cells = np.asarray(cells)
    if cells.shape != grid.shape:
        raise ValueError(f"cells have shape {cells.shape} but the grid is {grid.shape}")
    stem = Path(stem)
    pgm, yaml = stem.with_name(stem.name + ".pgm"), stem.with_name(stem.name + ".yaml")
    image = Image.fromarray(map_image(occupancy(cells), mode), mode="L")
    with atomic.file(pgm) as tmp:
        image.save(tmp, format="PPM")  # a mode "L" image is written as binary PGM (P5)
    x, y, yaw = grid.origin
    # Raw mode ignores the thresholds; they are written anyway, since map_server requires both keys.
    atomic.write_text(yaml, f"image: {pgm.name}\nmode: {mode}\nresolution: {grid.cell:g}\n"
                            f"origin: [{x:g}, {y:g}, {yaw:g}]\nnegate: 0\noccupied_thresh: {YAML_OCCUPIED_THRESH}\n"
                            f"free_thresh: {YAML_FREE_THRESH}\n")
    return pgm, yaml


# --- the arc planner -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridProfile:
    """How the arc planner weighs the grid.

    Attributes:
        clearance: metres kept free beside the vehicle's body along an arc.
        max_cost: an arc is blocked by any cell in its swept band costing more.
        unknown_cost: the cost of a cell the camera does not see (the sides of a sharp turn).
    """

    clearance: float
    max_cost: float
    unknown_cost: float

    def __post_init__(self):
        if not self.clearance >= 0.0:
            raise GroundError(f"clearance must be >= 0 m, got {self.clearance}")
        if not 0.0 <= self.max_cost < 1.0:
            raise GroundError(f"max_cost must be in [0, 1), got {self.max_cost}")
        if not 0.0 <= self.unknown_cost <= 1.0:
            raise GroundError(f"unknown_cost must be in [0, 1], got {self.unknown_cost}")


# The same names as navigation.PROFILES, which make the cost map these read.
# safe: 15 cm beside the body; blocked by anything above 0.35 (people, animals, vehicles,
# clutter, a class it cannot name, and ground the model is unsure of); what it cannot see
# costs 0.3, just passable, so it prefers arcs it has seen free.
# adventurous: 5 cm; blocked above 0.5, the strip planner's stop threshold, so people (0.7),
# animals (0.63) and vehicles (0.56) still block while clutter (0.42) does not; unseen ground
# costs little.
GRID_PROFILES: dict[str, GridProfile] = {
    "safe": GridProfile(clearance=0.15, max_cost=0.35, unknown_cost=0.3),
    "adventurous": GridProfile(clearance=0.05, max_cost=0.5, unknown_cost=0.1),
}


def grid_profile(profile: str | GridProfile) -> GridProfile:
    """A GridProfile, or the one named; GroundError naming an unknown name."""
    if isinstance(profile, GridProfile):
        return profile
    if profile not in GRID_PROFILES:
        raise GroundError(f"unknown profile {profile!r}; profiles are {sorted(GRID_PROFILES)}")
    return GRID_PROFILES[profile]


def arc_points(curvature: float, length: float, step: float) -> np.ndarray:
    """(N, 2) points (x, y) every `step` m along an arc of `curvature` from the origin, heading +x."""
    s = np.linspace(0.0, length, max(2, int(math.ceil(length / step)) + 1))
    if abs(curvature) < 1e-9:
        return np.stack([s, np.zeros_like(s)], axis=1)
    return np.stack([np.sin(curvature * s) / curvature, (1.0 - np.cos(curvature * s)) / curvature], axis=1)


class ArcPlanner:
    """Scores a fan of constant-curvature arcs of the vehicle's width over a cost Grid.

    Each arc starts at the base, heading forward, and runs `lookahead` m or a quarter turn,
    whichever is shorter (a sharper arc would curl back over ground behind the camera); its swept band is
    every cell whose centre lies within half the vehicle's width plus the profile's clearance
    of the arc. An arc is blocked if any cell of its band costs more than the profile's
    max_cost (unknown cells count as its unknown_cost). Of the free arcs the planner takes
    the one with the lowest mean band cost plus `turn_weight` times how far its curvature is
    from the preferred one (as a fraction of max_curvature); it stops when every arc is blocked.
    """

    def __init__(self, grid: Grid, profile: str | GridProfile = "safe", vehicle_width: float = 0.4,
                 lookahead: float = 2.0, arcs: int = 15, max_curvature: float = 2.0, turn_weight: float = 0.1):
        self.grid, self.profile = grid, grid_profile(profile)
        if not 0 < vehicle_width < grid.width:
            # A wider body sweeps cells beyond the grid's sides, whose obstacles it never sees.
            raise GroundError(f"vehicle width must be positive and narrower than the grid's {grid.width:g} m across "
                              f"(--grid-size LENGTHxWIDTH), got {vehicle_width} m")
        if not 0 < lookahead <= grid.length:
            raise GroundError(f"lookahead {lookahead} m must be positive and fit in the grid's {grid.length} m")
        arcs = operator.index(arcs)
        if arcs < 1 or arcs % 2 == 0:
            raise GroundError(f"arcs must be an odd number >= 1 (one goes straight ahead), got {arcs}")
        if not max_curvature > 0:
            raise GroundError(f"max_curvature must be positive, got {max_curvature}")
        self.vehicle_width, self.lookahead, self.turn_weight = vehicle_width, lookahead, turn_weight
        self.max_curvature = max_curvature
        self.curvatures = np.linspace(-max_curvature, max_curvature, arcs) if arcs > 1 else np.zeros(1)
        radius = vehicle_width / 2.0 + self.profile.clearance
        cx, cy = grid.centres()
        centres = np.stack([cx.ravel(), cy.ravel()], axis=1)  # (cells, 2)
        bands = []
        # A quarter turn at most, each.
        self.lengths = np.minimum(lookahead, (math.pi / 2) / np.maximum(np.abs(self.curvatures), 1e-9))
        for k, length in zip(self.curvatures, self.lengths):
            points = arc_points(k, length, grid.cell / 2.0)  # (N, 2)
            # Cells near the arc's box only, then the exact distance to its nearest point.
            lo, hi = points.min(axis=0) - radius, points.max(axis=0) + radius
            near = np.flatnonzero(np.all((centres >= lo) & (centres <= hi), axis=1))
            d2 = ((centres[near, None, :] - points[None, :, :]) ** 2).sum(axis=-1).min(axis=1)
            bands.append(near[d2 <= radius * radius])
        if any(band.size == 0 for band in bands):
            raise GroundError(f"an arc of the {vehicle_width} m vehicle sweeps no cell of the grid")
        self.bands = bands  # per arc, the flat cell indices of its swept band
        self._cells = np.concatenate(bands)
        self._starts = np.cumsum([0] + [b.size for b in bands[:-1]])
        self._counts = np.array([b.size for b in bands], np.float64)
        ends = np.array([arc_points(k, n, n)[-1] for k, n in zip(self.curvatures, self.lengths)])
        self.headings = np.degrees(np.arctan2(ends[:, 1], ends[:, 0]))  # chord direction, + left

    def plan(self, cells: npt.ArrayLike, prefer: float = 0.0) -> dict:
        """Choose an arc over (rows, cols) cell costs (NaN unknown).

        Args:
            prefer: the curvature to prefer when costs are equal (0: straight on; a
                simulation steering back to its course passes its own).

        Returns:
            {"curvature": 1/m (+ left), "heading_deg": the chosen arc's chord direction (+ left),
            "arc": its index, "stop": bool, "arc_costs": per arc, the highest cost in its band,
            "arc_means": per arc, its mean band cost}. On a stop, curvature and heading are 0
            and arc is None.
        """
        c = np.asarray(cells, dtype=np.float32)
        if c.shape != self.grid.shape:
            raise ValueError(f"cells have shape {c.shape} but the grid is {self.grid.shape}")
        values = c.ravel()[self._cells]
        values = np.where(np.isnan(values), np.float32(self.profile.unknown_cost), values)
        highest = np.maximum.reduceat(values, self._starts)  # (arcs,)
        mean = np.add.reduceat(values.astype(np.float64), self._starts) / self._counts
        free = highest <= self.profile.max_cost
        if not free.any():
            return {"curvature": 0.0, "heading_deg": 0.0, "arc": None, "stop": True,
                    "arc_costs": highest.tolist(), "arc_means": mean.tolist()}
        score = mean + self.turn_weight * np.abs(self.curvatures - prefer) / self.max_curvature
        score = np.where(free, score, np.inf)
        best = int(np.argmin(score))  # ties: argmin takes the first, so the scan order below decides
        tied = np.flatnonzero(score <= score[best] + 1e-9)
        best = int(min(tied, key=lambda i: (abs(self.curvatures[i] - prefer), i)))
        return {"curvature": float(self.curvatures[best]), "heading_deg": float(self.headings[best]),
                "arc": best, "stop": False, "arc_costs": highest.tolist(), "arc_means": mean.tolist()}


def plan_record(result: dict) -> dict:
    """The JSON-lines fields of an ArcPlanner.plan result."""
    return {"planner": "grid", "curvature": round(result["curvature"], 4),
            "heading_deg": round(result["heading_deg"], 2), "stop": result["stop"],
            "arc_costs": [round(float(v), 4) for v in result["arc_costs"]]}


class GroundNavigator:
    """Probabilities to a steering arc: navigation.cost_map (with the profile's class costs,
    uncertainty and image-space margin), then the ground grid, then the ArcPlanner (with the
    profile's metric clearance). One Projector per frame size, made when first needed."""

    def __init__(self, camera: Camera, grid: Grid, profile: str, class_costs: npt.ArrayLike,
                 vehicle_width: float = 0.4):
        self.camera, self.grid, self.profile = camera, grid, profile
        self.class_costs = np.asarray(class_costs, np.float32)
        self.planner = ArcPlanner(grid, profile, vehicle_width=vehicle_width)
        self._projectors: dict[tuple[int, int], Projector] = {}

    def projector(self, width: int, height: int) -> Projector:
        """The Projector for `width` x `height` frames (GroundError if the camera cannot see the grid)."""
        if (width, height) not in self._projectors:
            self._projectors[(width, height)] = Projector(self.camera, self.grid, (width, height))
        return self._projectors[(width, height)]

    def navigate(self, probs: npt.ArrayLike, prefer: float = 0.0) -> dict:
        """(H, W, C) probabilities -> ArcPlanner.plan's dict plus "cost_map" (H, W) and "cells" (rows, cols)."""
        return self.navigate_cost(navigation.cost_map(probs, self.profile, self.class_costs), prefer)

    def navigate_cost(self, cost: npt.ArrayLike, prefer: float = 0.0) -> dict:
        """navigate() from an (H, W) cost map already made (a video loop's graph makes it)."""
        cost = np.asarray(cost, np.float32)
        cells = self.projector(cost.shape[1], cost.shape[0]).project(cost)
        return {**self.planner.plan(cells, prefer=prefer), "cost_map": cost, "cells": cells}

    def record(self, result: dict) -> dict:
        """The JSON-lines fields: plan_record's, and "grid", the OccupancyGrid (grid_record)."""
        return {**plan_record(result), "grid": grid_record(result["cells"], self.grid)}


def add_arguments(parser: argparse.ArgumentParser, camera: Camera | None = None) -> None:
    """The camera and grid flags, for predict.py and simulate.py; `camera` gives their defaults
    (simulate.py's simulated camera), None makes the camera the user's to give (predict.py)."""
    def default(name):
        value = None if camera is None else getattr(camera, name)
        return value, ("" if value is None else f" (default {value:g})")

    (height, says_height), (pitch, says_pitch), (hfov, says_hfov) = map(default, ("height", "pitch", "hfov"))
    parser.add_argument("--camera-height", type=float, metavar="M", default=height,
                        help="camera height above the ground in metres" + says_height)
    parser.add_argument("--camera-pitch", type=float, metavar="DEG", default=pitch,
                        help="degrees the camera looks below the horizon" + says_pitch)
    lens = parser.add_mutually_exclusive_group()
    lens.add_argument("--hfov", type=float, metavar="DEG", default=hfov, help="horizontal field of view" + says_hfov)
    lens.add_argument("--calibration", metavar="FILE", help="intrinsics instead of --hfov: ROS camera_calibration's "
                      "YAML (ost.yaml) or the same keys as JSON")
    parser.add_argument("--grid-size", type=_size_argument, default=(4.0, 4.0), metavar="LxW",
                        help="ground grid in metres, forward x across (default 4x4)")
    parser.add_argument("--cell", type=float, default=0.05, metavar="M", help="grid cell size in metres (default 0.05)")


def _size_argument(text: str) -> tuple[float, float]:
    try:
        return parse_size(text)
    except GroundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def from_arguments(args) -> tuple[Camera, Grid]:
    """The Camera and Grid that add_arguments' flags describe; GroundError naming what is missing or wrong."""
    missing = [flag for flag, value in (("--camera-height", args.camera_height), ("--camera-pitch", args.camera_pitch))
               if value is None]
    if args.hfov is None and args.calibration is None:
        missing.append("--hfov or --calibration")
    if missing:
        raise GroundError(f"the ground grid needs the camera: give {', '.join(missing)} (measured on the vehicle)")
    if args.calibration:
        intrinsics, size = load_calibration(args.calibration)
        camera = Camera(height=args.camera_height, pitch=args.camera_pitch, intrinsics=intrinsics, calibrated_size=size)
    else:
        camera = Camera(height=args.camera_height, pitch=args.camera_pitch, hfov=args.hfov)
    return camera, Grid(length=args.grid_size[0], width=args.grid_size[1], cell=args.cell)
