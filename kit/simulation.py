"""Closed-loop driving in kit/scene.py's worlds: the camera sees, a segmenter labels, the grid
planner steers, the vehicle moves, until it arrives, stops or hits something. Pure NumPy; the
segmenter is passed in (simulate.py gives either the exact masks or a trained model):

    from kit import simulation
    settings = simulation.Settings(episodes=20)
    results = simulation.run(settings, "safe", simulation.ground_truth)
    simulation.summarise(results)   # collisions per 100 m, progress, stops, minimum clearance

Each control step renders the frame at the vehicle's pose (scene.render), turns the
segmenter's probabilities into a cost map (navigation.cost_map with the profile), maps it onto
the ground grid (ground.Projector) and lets ground.ArcPlanner pick a curvature, preferring the
one that turns the vehicle back toward the course (+x). The vehicle then drives `step` m along
that arc; its body, a disc as wide as the vehicle, is checked against every obstacle's
footprint along the way. An episode ends when the vehicle has come `course` m, when the
planner stops (no free arc: it waits for a person), when it collides, or after `max_steps`.
Episode i's world, start and sensor noise come from seed (seed, i), whatever the profile, so
profiles are compared on the same worlds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kit import ground
from kit import navigation
from kit import scene
from kit import synthetic
from kit import voc

# image (H, W, 3) uint8 (None when the segmenter's `needs_image` is False), exact mask (H, W)
# uint8 -> (H, W, C) class probabilities
Segmenter = Callable[[np.ndarray | None, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Settings:
    """One simulation's setup; every profile run with it sees the same worlds."""

    episodes: int = 20
    seed: int = 0
    size: tuple[int, int] = (128, 128)  # frame (width, height)
    camera: ground.Camera = scene.CAMERA
    grid: ground.Grid = field(default_factory=ground.Grid)
    vehicle_width: float = 0.4
    step: float = 0.1  # metres driven per planning step
    course: float = 12.0  # metres forward to arrive
    max_steps: int = 250
    world_half_width: float = 3.0  # obstacles lie within this of the course line
    class_costs: tuple[float, ...] | None = None  # None: VOC's table (navigation.class_costs_for)

    def __post_init__(self):
        if self.episodes < 1 or self.max_steps < 1:
            raise ground.GroundError(f"episodes and max_steps must be >= 1, got {self.episodes}, {self.max_steps}")
        for flag, value in (("--step", self.step), ("--course", self.course), ("--vehicle-width", self.vehicle_width)):
            if not (value > 0 and math.isfinite(value)):
                raise ground.GroundError(f"{flag} must be a positive number of metres, got {value}")


def ground_truth(image: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """The exact masks as certain probabilities: (H, W) -> (H, W, 21) one-hot float32."""
    return np.eye(voc.NUM_CLASSES, dtype=np.float32)[mask]


ground_truth.needs_image = False  # the frames need not be shaded


def _course_pull(y: float, yaw: float, max_curvature: float) -> float:
    """The curvature that turns the vehicle back toward heading +x along y = 0, gently."""
    return float(np.clip(-1.5 * math.atan2(math.sin(yaw), math.cos(yaw)) - 0.4 * y, -max_curvature, max_curvature))


def run_episode(settings: Settings, index: int, segment: Segmenter, navigator: ground.GroundNavigator) -> dict:
    """Drive episode `index` with `profile`; returns its record (see run)."""
    rng = np.random.default_rng([settings.seed, index])
    world = scene.random_world(rng, length=settings.course + settings.grid.length,
                               half_width=settings.world_half_width)
    x, y, yaw = 0.0, float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.2, 0.2))
    radius = settings.vehicle_width / 2.0
    noise_seed = int(rng.integers(2 ** 31))
    clearance, driven, outcome, steps = math.inf, 0.0, "timeout", 0
    substeps = max(1, int(math.ceil(settings.step / 0.02)))
    # Obstacles beyond the grid's farthest corner cannot change a cell (scene.render's max_range).
    reach = math.hypot(settings.grid.length, settings.grid.width / 2.0) + 0.5
    for steps in range(1, settings.max_steps + 1):
        frame_rng = np.random.default_rng([noise_seed, steps])  # the same noise at the same step, any profile
        image, mask = scene.render(world, (x, y, yaw), settings.camera, settings.size, frame_rng,
                                   synthetic.driving_colour, synthetic.driving_texture, max_range=reach,
                                   with_image=getattr(segment, "needs_image", True))
        result = navigator.navigate(segment(image, mask),
                                    prefer=_course_pull(y, yaw, navigator.planner.max_curvature))
        if result["stop"]:
            outcome = "stop"
            break
        k, ds = result["curvature"], settings.step / substeps
        hit = False
        for _ in range(substeps):
            if abs(k) < 1e-9:
                x, y = x + ds * math.cos(yaw), y + ds * math.sin(yaw)
            else:
                x += (math.sin(yaw + k * ds) - math.sin(yaw)) / k
                y -= (math.cos(yaw + k * ds) - math.cos(yaw)) / k
                yaw += k * ds
            driven += ds
            gap = float(scene.footprint_distance(world, x, y).min(initial=math.inf)) - radius
            clearance = min(clearance, gap)
            if gap <= 0.0:
                hit = True
                break
        if hit:
            outcome = "collision"
            break
        if x >= settings.course:
            outcome = "arrived"
            break
    return {"episode": index, "outcome": outcome, "progress": min(x, settings.course), "driven": driven,
            "steps": steps, "min_clearance": clearance}


def run(settings: Settings, profile: str, segment: Segmenter,
        progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Every episode with one profile; per episode {"episode", "outcome" (arrived, stop,
    collision or timeout), "progress" (m forward, at most course), "driven" (m of path),
    "steps", "min_clearance" (m between the body and the nearest obstacle, <= 0 on a
    collision)}."""
    costs = (navigation.class_costs_for(voc.CLASS_NAMES) if settings.class_costs is None
             else np.asarray(settings.class_costs, np.float32))
    navigator = ground.GroundNavigator(settings.camera, settings.grid, profile, costs, settings.vehicle_width)
    navigator.projector(*settings.size)  # a camera that cannot see the grid fails before the first episode
    results = []
    for i in range(settings.episodes):
        start = time.perf_counter()
        record = run_episode(settings, i, segment, navigator)
        record["seconds"] = round(time.perf_counter() - start, 3)
        results.append(record)
        if progress is not None:
            progress(record)
    return results


def summarise(results: list[dict]) -> dict:
    """Per-profile figures: episodes, metres driven, collisions, collisions per 100 m, mean
    progress per episode, stops, arrivals and the minimum clearance over all episodes."""
    driven = sum(r["driven"] for r in results)
    collisions = sum(r["outcome"] == "collision" for r in results)
    return {
        "episodes": len(results),
        "driven_m": round(driven, 2),
        "collisions": int(collisions),
        "collisions_per_100m": round(100.0 * collisions / driven, 2) if driven > 0 else 0.0,
        "progress_m": round(float(np.mean([r["progress"] for r in results])), 2),
        "stops": int(sum(r["outcome"] == "stop" for r in results)),
        "arrived": int(sum(r["outcome"] == "arrived" for r in results)),
        "min_clearance_m": round(float(min(r["min_clearance"] for r in results)), 3),
    }
