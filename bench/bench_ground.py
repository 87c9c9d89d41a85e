"""Speed of the ground grid: inverse perspective mapping + the arc planner per frame, on one core.

    python bench/bench_ground.py [--size 256] [--frames 200] [--cell 0.05] [--grid-size 4x4]

The goal (issue: IPM + grid planner <= 5 ms per 256 px frame on one core). The process is
pinned to one core and NumPy's BLAS to one thread before NumPy loads. Frames are driving
scenes (kit/scene.py) seen through the simulated camera, at --size x --size, their exact masks
turned into cost maps once (navigation.cost_map, timed on its own for context: it runs before
either planner). Then per frame and profile: Projector.project (IPM) and ArcPlanner.plan,
median and 95th percentile over the frames, after a warm-up pass; and the one-off set-up
(Projector and ArcPlanner construction), which a frame size pays once. Prints JSON.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # one core: before NumPy starts its thread pool

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kit import ground  # noqa: E402
from kit import navigation  # noqa: E402
from kit import runtime  # noqa: E402
from kit import scene  # noqa: E402
from kit import simulation  # noqa: E402
from kit import synthetic  # noqa: E402
from kit import voc  # noqa: E402
from common import emit  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="square frame size in pixels (default 256)")
    p.add_argument("--frames", type=int, default=200, help="frames timed per profile (default 200)")
    p.add_argument("--grid-size", type=ground.parse_size, default=(4.0, 4.0), help="LxW metres (default 4x4)")
    p.add_argument("--cell", type=float, default=0.05, help="cell size in metres (default 0.05)")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def _ms(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median_ms": round(1000 * statistics.median(ordered), 3),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 3)}


def main(args) -> dict:
    core = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if core is not None:
        os.sched_setaffinity(0, {core})
    size = (args.size, args.size)
    grid = ground.Grid(length=args.grid_size[0], width=args.grid_size[1], cell=args.cell)
    costs = navigation.class_costs_for(voc.CLASS_NAMES)
    rng = np.random.default_rng(0)
    masks = []
    for i in range(args.frames):
        world = scene.random_world(np.random.default_rng([0, i]), start_clear=0.3)
        pose = (float(rng.uniform(0, 6)), float(rng.uniform(-1, 1)), float(rng.uniform(-0.4, 0.4)))
        masks.append(scene.render(world, pose, scene.CAMERA, size, rng, synthetic.driving_colour,
                                  with_image=False)[1])
    result = {"cpu": runtime.cpu_model(), "arch": platform.machine(), "pinned_core": core, "numpy": np.__version__,
              "frame": f"{args.size}x{args.size}", "grid": f"{grid.length:g}x{grid.width:g} m",
              "cell_m": grid.cell, "cells": list(grid.shape), "frames": args.frames, "profiles": {}}
    for profile in sorted(ground.GRID_PROFILES):
        cost_maps, times = [], []
        for mask in masks:
            probs = simulation.ground_truth(None, mask)  # (H, W, 21) one-hot
            start = time.perf_counter()
            cost_maps.append(navigation.cost_map(probs, profile, costs))
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        projector = ground.Projector(scene.CAMERA, grid, size)
        planner = ground.ArcPlanner(grid, profile)
        setup = time.perf_counter() - start
        for cost in cost_maps[:20]:  # warm-up
            planner.plan(projector.project(cost))
        ipm, plan, both = [], [], []
        for cost in cost_maps:
            t0 = time.perf_counter()
            cells = projector.project(cost)
            t1 = time.perf_counter()
            planner.plan(cells)
            t2 = time.perf_counter()
            ipm.append(t1 - t0)
            plan.append(t2 - t1)
            both.append(t2 - t0)
        result["profiles"][profile] = {"ipm": _ms(ipm), "planner": _ms(plan), "ipm_plus_planner": _ms(both),
                                       "cost_map_for_context": _ms(times), "setup_once_ms": round(1000 * setup, 1)}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main(parse_args())
