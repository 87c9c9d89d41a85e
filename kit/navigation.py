"""From class probabilities to a heading: the planner-facing end of the kit, in pure NumPy.

The vehicle's planner gets the model's softmax for one camera frame (inference.Predictor's
`probabilities`, (H, W, C)), turns it into a cost map in [0, 1] and steers toward the
cheapest of a few vertical strips of the near field:

    from kit import navigation
    probs = predictor.probabilities(image[None])[0].numpy()  # (H, W, C) float32
    result = navigation.navigate(probs, profile="safe", sectors=5)
    result["heading"]  # 0 = far left ... sectors - 1 = far right
    result["stop"]     # every strip is too expensive: brake

Two steps, usable on their own: `cost_map(probs, profile, class_costs)` and
`plan(cost, sectors, stop_threshold)`. A data set with its own classes passes
`class_costs=class_costs_for(its_class_names, overrides)`.

Only NumPy and kit/voc.py (NumPy and PIL) are imported, never TensorFlow, Keras, SciPy or
OpenCV, so a ROS node can import this cheaply.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from kit import voc

# Class costs in [0, 1]: 0 is free to drive on, 1 is never hit. The ordering is what matters:
# people above animals (they move unpredictably) above vehicles (hard, but mostly still) above
# clutter a small vehicle merely bumps into.
FREE_COST = 0.0
PERSON_COST = 1.0
ANIMAL_COST = 0.9
VEHICLE_COST = 0.8
CLUTTER_COST = 0.6
# A class we cannot name is treated nearly as an obstacle: guessing "free" is the costly mistake.
UNKNOWN_COST = 0.7

VOC_CLASS_COSTS: dict[str, float] = {
    "background": FREE_COST,  # VOC's only traversable class: floor, road, grass all land here
    "person": PERSON_COST,
    **dict.fromkeys(("bird", "cat", "cow", "dog", "horse", "sheep"), ANIMAL_COST),
    **dict.fromkeys(("aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"),
                    VEHICLE_COST),
    **dict.fromkeys(("bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"),
                    CLUTTER_COST),
}

# Names users' own data sets commonly give to drivable ground (compared after _key()).
TRAVERSABLE_NAMES: frozenset[str] = frozenset((
    "background", "road", "floor", "ground", "grass", "lawn", "sidewalk", "pavement", "path",
    "track", "trail", "lane", "terrain", "dirt", "gravel", "carpet", "free", "freespace",
    "drivable", "driveable", "drivablearea", "driveablearea",
    # ADE20K's ground classes (its names for earth, rugs, fields, land, dirt tracks)
    "earth", "rug", "field", "land", "dirttrack",
))
# Other data sets' names for VOC's dangerous classes, so "pedestrian" is not merely "unknown".
SYNONYM_COSTS: dict[str, float] = {
    **dict.fromkeys(("pedestrian", "people", "human", "rider", "child", "bicyclist"), PERSON_COST),
    **dict.fromkeys(("animal", "pet"), ANIMAL_COST),
    **dict.fromkeys(("vehicle", "truck", "van", "motorcycle", "bike", "airplane", "tram"),
                    VEHICLE_COST),
    # Own data sets name their obstacles outright: never drive into them, whatever the profile.
    **dict.fromkeys(("obstacle", "obstacles", "wall", "barrier", "pole", "post", "rock", "fence",
                     "building", "tree", "curb", "kerb", "cone", "trafficcone", "bollard", "stairs",
                     "water", "cliff", "hole", "door",
                     # Cityscapes', CamVid's and ADE20K's names for more of the same
                     "vegetation", "trafficlight", "trafficsign", "signsymbol", "column", "railing",
                     "stairway", "step"), 1.0),
}

# How far a pixel's probabilities may stray from [0, 1] and a sum of 1 (float16 and int8
# exports round them) before cost_map refuses them as not probabilities.
PROBABILITY_TOLERANCE = 0.02

# Strip costs closer than this to the cheapest count as equally cheap (then the centre wins).
TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Profile:
    """How cautiously class probabilities become cost.

    Attributes:
        cost_scale: multiplies every class cost, in [0, 1] (1 keeps the table as it is).
        uncertainty_weight: >= 0; (1 - max_c p_c) times this is added as cost, so pixels the
            model is unsure about are avoided.
        clearance: obstacle inflation radius as a fraction of the image width (at least 1 px):
            the vehicle has a body, and segment borders are the least accurate pixels.
    """

    cost_scale: float
    uncertainty_weight: float
    clearance: float

    def __post_init__(self):
        if not 0.0 <= self.cost_scale <= 1.0:
            raise ValueError(f"cost_scale must be in [0, 1], got {self.cost_scale}")
        if not self.uncertainty_weight >= 0.0:
            raise ValueError(f"uncertainty_weight must be >= 0, got {self.uncertainty_weight}")
        if not 0.0 <= self.clearance < 1.0:
            raise ValueError(f"clearance must be in [0, 1), got {self.clearance}")

    def radius(self, width: int) -> int:
        """Inflation radius in pixels for an image `width` pixels wide (at least 1)."""
        return max(1, int(round(self.clearance * width)))


# safe: the full class costs; half of the model's doubt counts as obstacle (a uniform guess over
# VOC's classes then costs 1, a 70%-sure background pixel ~0.38); a 5% of width margin (19 px
# at 384 px, a quarter of a strip at 5 sectors) around everything.
# adventurous: costs at 70%, which keeps people (0.7), animals (0.63) and vehicles (0.56) above
# the default stop threshold of 0.5 while clutter (0.42) and unknown classes (0.49) are not
# (a small vehicle may push through chairs and plants when told to be adventurous);
# no uncertainty term; a 2% margin.
# Every adventurous parameter is <= its safe counterpart, which cost_map turns into
# safe >= adventurous at every pixel (see the comment there).
PROFILES: dict[str, Profile] = {
    "safe": Profile(cost_scale=1.0, uncertainty_weight=0.5, clearance=0.05),
    "adventurous": Profile(cost_scale=0.7, uncertainty_weight=0.0, clearance=0.02),
}


def _key(name: str) -> str:
    """Compare class names without case, spaces or punctuation: "Potted plant" == "pottedplant"."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


_DEFAULT_COSTS: dict[str, float] = {
    **SYNONYM_COSTS,
    **dict.fromkeys(TRAVERSABLE_NAMES, FREE_COST),
    **VOC_CLASS_COSTS,
}


def class_costs_for(class_names: Sequence[str],
                    overrides: Mapping[str, float] | None = None) -> np.ndarray:
    """Per-class costs for any class list, matched by name.

    VOC names get VOC_CLASS_COSTS, common names of drivable ground (road, floor, grass, ...) get
    0 (and "background" then gets UNKNOWN_COST: it is whatever was not labelled), a few synonyms of people, animals and vehicles get their VOC group's cost, anything else
    gets UNKNOWN_COST; `overrides` (name -> cost) wins. Names match ignoring case, spaces and
    punctuation.

    Returns:
        (C,) float32 costs in [0, 1], in the order of `class_names`.

    Raises:
        ValueError: an override names a class not in `class_names`, or a cost is outside [0, 1].
    """
    keys = [_key(name) for name in class_names]
    costs = np.array([_DEFAULT_COSTS.get(k, UNKNOWN_COST) for k in keys], dtype=np.float64)
    # "background" is free only where it is the sole ground there is (VOC). A data set that
    # names its drivable ground (road, floor...) leaves walls, kerbs and whatever else nobody
    # labelled in "background": an all-background view is then not a free one.
    if any(k in TRAVERSABLE_NAMES and k != "background" for k in keys):
        costs[[i for i, k in enumerate(keys) if k == "background"]] = UNKNOWN_COST
    overrides = dict(overrides or {})
    unknown = [name for name in overrides if _key(name) not in keys]
    if unknown:
        raise ValueError(f"overrides name classes that are not in the class list: {unknown}; "
                         f"classes are {list(class_names)}")
    bad = {name: cost for name, cost in overrides.items() if not 0.0 <= float(cost) <= 1.0}
    if bad:
        raise ValueError(f"class costs must be in [0, 1], got {bad}")
    for name, cost in overrides.items():
        costs[[i for i, k in enumerate(keys) if k == _key(name)]] = float(cost)
    return costs.astype(np.float32)


def _resolve_costs(class_costs, num_classes: int) -> np.ndarray:
    """class_costs as cost_map takes it (None, a dict or an array) -> (C,) float32 in [0, 1]."""
    if class_costs is None or isinstance(class_costs, Mapping):
        if num_classes != voc.NUM_CLASSES:
            raise ValueError(
                f"the default class costs are for VOC's {voc.NUM_CLASSES} classes but the "
                f"probabilities have {num_classes}; for a data set with its own classes pass "
                f"class_costs=navigation.class_costs_for(its_class_names)")
        return class_costs_for(voc.CLASS_NAMES, class_costs)
    costs = np.asarray(class_costs, dtype=np.float64)
    if costs.shape != (num_classes,):
        raise ValueError(f"class_costs has shape {costs.shape} but the probabilities have "
                         f"{num_classes} classes")
    bad = np.flatnonzero(~((costs >= 0.0) & (costs <= 1.0)))  # NaN is bad too
    if bad.size:
        raise ValueError(f"class costs must be in [0, 1]; classes {bad.tolist()} have "
                         f"{costs[bad].tolist()}")
    return costs.astype(np.float32)


def profile_of(profile: str | Profile) -> Profile:
    """The Profile a name in PROFILES stands for (a Profile passes through); ValueError if unknown."""
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; profiles are {sorted(PROFILES)}")
    return PROFILES[profile]


def max_filter(values: npt.ArrayLike, radius: int) -> np.ndarray:
    """Grey dilation of an (H, W) array over a (2 * radius + 1)-pixel square window.

    Separable (a max over rows, then over columns), and the window is cut at the image border
    (edge padding repeats border values, which cannot change a max). Each 1-D max doubles
    its span log2(window) times and then covers the window with two overlapping spans, so it
    costs O(H * W * log radius) in a few NumPy passes rather than a pass per window pixel,
    which matters inside a video loop.
    """
    a = np.asarray(values)
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) array, got shape {a.shape}")
    radius = operator.index(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return a.copy()
    k = 2 * radius + 1
    return _running_max(_running_max(a, k, axis=1), k, axis=0)  # (H, W)


def _running_max(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Max over a centred window of odd length k along `axis`, edges repeated; same shape as a."""
    n, radius = a.shape[axis], k // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (radius, radius)
    span = np.pad(a, pad, mode="edge")  # n + k - 1 along axis

    def cut(x, start, length):  # x[start:start + length] along axis, a view
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + length)
        return x[tuple(index)]

    width = 1  # span[i] holds the max of the padded values i .. i + width - 1
    while 2 * width <= k:
        length = span.shape[axis] - width
        span = np.maximum(cut(span, 0, length), cut(span, width, length))
        width *= 2
    # Window i .. i + k - 1 = spans starting at i and at i + k - width (width <= k < 2 * width).
    return np.maximum(cut(span, 0, n), cut(span, k - width, n))


def _max_over_classes(p: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W) max over C, by a running np.maximum over the C class planes: half
    the time of p.max(axis=-1), which NumPy runs as H * W short reductions (1.7 vs 3.3 ms at
    256x256x21), on the video writer's thread where it competes with the model."""
    out = p[..., 0].copy()
    for c in range(1, p.shape[-1]):
        np.maximum(out, p[..., c], out=out)
    return out


def cost_map(probs: npt.ArrayLike, profile: str | Profile = "safe",
             class_costs: npt.ArrayLike | Mapping[str, float] | None = None) -> np.ndarray:
    """Traversal cost of every pixel from class probabilities.

    The expected class cost sum_c p_c * cost_c, scaled by the profile's cost_scale, plus
    uncertainty_weight * (1 - max_c p_c), clipped to [0, 1], then inflated by a max filter
    of the profile's clearance radius.

    Args:
        probs: (H, W, C) class probabilities (each pixel summing to ~1).
        profile: a name in PROFILES ("safe" or "adventurous") or a Profile.
        class_costs: (C,) costs in [0, 1]; or a dict {VOC class name: cost} overriding the
            VOC defaults; or None for the VOC defaults. Both of the latter need C == 21: other
            data sets pass class_costs_for(their_class_names, overrides).

    Returns:
        (H, W) float32 cost in [0, 1].
    """
    spec = profile_of(profile)
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3 or 0 in p.shape:
        raise ValueError(f"expected (H, W, C) class probabilities, got shape {p.shape}")
    costs = _resolve_costs(class_costs, p.shape[-1])  # (C,)
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or infinity")
    # Logits or scores would give a plausible-looking but meaningless map: refuse them.
    sums = p @ np.ones(p.shape[-1], np.float32)  # (H, W); a matrix product: 6x faster than sum(axis=-1)
    if p.min() < -PROBABILITY_TOLERANCE or p.max() > 1 + PROBABILITY_TOLERANCE or \
            np.abs(sums - 1.0).max() > PROBABILITY_TOLERANCE:
        raise ValueError(f"expected softmax probabilities (each pixel in [0, 1], summing to 1; got values in "
                         f"[{p.min():.3g}, {p.max():.3g}] summing to [{sums.min():.3g}, {sums.max():.3g}]): "
                         f"logits? apply a softmax first")
    # Safe >= adventurous at every pixel, for any input, by construction: every step below is
    # monotone in the profile's parameters (each computed once, shared by all profiles) and
    # the adventurous parameters are all <= the safe ones. The expected cost is clipped at 0
    # before it is scaled (scaling a non-negative float32 by s <= 1 never rounds it up); the
    # uncertainty term is >= 0 so a larger weight only adds; IEEE rounding of + and * is
    # monotone; clipping is monotone; a max filter is monotone in its input and a larger
    # window (the radius is monotone in clearance) takes a max over a superset.
    expected = np.maximum(p @ costs, np.float32(0.0))  # (H, W): sum_c p_c * cost_c
    cost = np.float32(spec.cost_scale) * expected
    if spec.uncertainty_weight > 0.0:
        uncertainty = np.clip(np.float32(1.0) - _max_over_classes(p), 0.0, 1.0)  # (H, W)
        cost = cost + np.float32(spec.uncertainty_weight) * uncertainty
    cost = np.clip(cost, 0.0, 1.0)
    return max_filter(cost, spec.radius(p.shape[1])).astype(np.float32, copy=False)


def strip_edges(width: int, sectors: int) -> np.ndarray:
    """Column edges of `sectors` strips, (sectors + 1,): mirror-symmetric, each >= 1 column.

    The right half mirrors the left, so a mirrored image gives mirrored strips (exactly,
    except for the middle column of an odd width split into an even number of strips).
    """
    i = np.arange(sectors + 1)
    left = (i * width) // sectors
    right = width - ((sectors - i) * width) // sectors
    return np.where(2 * i <= sectors, left, right)


def plan(cost: npt.ArrayLike, sectors: int = 5, stop_threshold: float = 0.5) -> dict:
    """Pick the cheapest strip of the near field.

    The lower half of the rows (nearest the vehicle) is split into `sectors` vertical strips,
    left to right. A strip's cost is the mean of its pixels weighted by row, the weight rising
    linearly toward the bottom (nearer is more urgent): from 1/n on the half's top row to 1 on
    the image's bottom row.

    Args:
        cost: (H, W) cost map in [0, 1], as cost_map returns.
        sectors: number of strips, 1 <= sectors <= W.
        stop_threshold: stop when every strip costs more than this.

    Returns:
        {"heading": index of the cheapest strip (0 = far left, sectors - 1 = far right; strips
        within TIE_TOLERANCE of the cheapest tie, and the one nearest the centre wins, the left
        one of two equally near), "sector_costs": list of floats, left to right, "stop": bool}.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or 0 in c.shape:
        raise ValueError(f"expected an (H, W) cost map, got shape {c.shape}")
    height, width = c.shape
    sectors = operator.index(sectors)
    if not 1 <= sectors <= width:
        raise ValueError(f"sectors must be between 1 and the image width {width}, got {sectors}")
    if not np.isfinite(c).all():
        raise ValueError("cost map contains NaN or infinity")
    # A cost never exceeds 1, so a threshold of 1 or NaN would mean "never stop".
    if not isinstance(stop_threshold, (int, float, np.floating)) or not 0.0 <= stop_threshold < 1.0:
        raise ValueError(f"stop_threshold must be a number in [0, 1), got {stop_threshold!r}")
    near = c[height // 2:]  # (n, W): for odd H the middle row counts as near
    weights = np.arange(1, near.shape[0] + 1, dtype=np.float64)  # (n,), largest at the bottom
    column_cost = weights @ near / weights.sum()  # (W,)
    edges = strip_edges(width, sectors)
    strip_cost = np.add.reduceat(column_cost, edges[:-1]) / np.diff(edges)  # (sectors,)
    tied = np.flatnonzero(strip_cost <= strip_cost.min() + TIE_TOLERANCE)
    centre = (sectors - 1) / 2
    heading = min(tied.tolist(), key=lambda s: (abs(s - centre), s))
    return {
        "heading": int(heading),
        "sector_costs": [float(v) for v in strip_cost],
        "stop": bool(np.all(strip_cost > stop_threshold)),
    }


def navigate(probs: npt.ArrayLike, profile: str | Profile = "safe",
             class_costs: npt.ArrayLike | Mapping[str, float] | None = None,
             sectors: int = 5, stop_threshold: float = 0.5) -> dict:
    """plan(cost_map(probs, profile, class_costs), sectors, stop_threshold), plus the map.

    Returns:
        plan's dict with "cost_map": the (H, W) float32 cost map it planned on.
    """
    return navigate_cost(cost_map(probs, profile=profile, class_costs=class_costs), sectors, stop_threshold)


def navigate_cost(cost: npt.ArrayLike, sectors: int = 5, stop_threshold: float = 0.5) -> dict:
    """navigate() from an (H, W) cost map already made (a video loop's graph makes it):
    plan's dict with "cost_map"."""
    cost = np.asarray(cost, dtype=np.float32)
    return {**plan(cost, sectors=sectors, stop_threshold=stop_threshold), "cost_map": cost}
