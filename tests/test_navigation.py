"""kit/navigation.py on crafted probability maps: where the plan heads, when it stops, and the costs.

Pure NumPy and fast: run alone with `python -m pytest -q tests/test_navigation.py`.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kit import navigation
from kit import voc

H, W = 60, 100  # 5 strips of 20 columns; the near field is rows 30-59
PERSON = voc.CLASS_NAMES.index("person")
CHAIR = voc.CLASS_NAMES.index("chair")
PROFILES = ("safe", "adventurous")


def soft_one_hot(labels, num_classes=voc.NUM_CLASSES, smoothing=0.02):
    """(H, W) class indices -> (H, W, C) float32 probabilities, a little smoothed like a softmax."""
    one_hot = np.eye(num_classes, dtype=np.float32)[labels]
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def scene(*objects):
    """Background everywhere, then (rows slice, cols slice, class) boxes painted in order."""
    labels = np.zeros((H, W), np.int64)
    for rows, cols, cls in objects:
        labels[rows, cols] = cls
    return soft_one_hot(labels)


NEAR = slice(H // 2, H)


@pytest.mark.parametrize("profile", PROFILES)
def test_free_space_heads_straight_on_for_both_profiles(profile):
    result = navigation.navigate(scene(), profile=profile)
    assert result["heading"] == 2 and result["stop"] is False
    assert len(result["sector_costs"]) == 5
    np.testing.assert_allclose(result["sector_costs"], 0.0, atol=0.03)


def test_person_on_the_left_makes_the_safe_plan_head_right():
    result = navigation.navigate(scene((NEAR, slice(0, 45), PERSON)), profile="safe")
    assert result["heading"] > 2 and result["stop"] is False
    costs = result["sector_costs"]
    assert costs[0] > 0.9 and costs[1] > 0.9 and costs[4] < 0.05


def test_person_on_the_right_makes_the_safe_plan_head_left():
    result = navigation.navigate(scene((NEAR, slice(W - 45, W), PERSON)), profile="safe")
    assert result["heading"] < 2 and result["stop"] is False


@pytest.mark.parametrize("profile", PROFILES)
def test_a_wall_of_people_stops_both_profiles(profile):
    # Adventurous scales people to 0.7, still above the default threshold of 0.5.
    result = navigation.navigate(scene((NEAR, slice(None), PERSON)), profile=profile)
    assert result["stop"] is True
    assert min(result["sector_costs"]) > 0.5


def test_a_wall_of_chairs_stops_only_the_safe_profile():
    wall = scene((NEAR, slice(None), CHAIR))
    assert navigation.navigate(wall, profile="safe")["stop"] is True
    assert navigation.navigate(wall, profile="adventurous")["stop"] is False


def test_obstacles_in_the_far_field_do_not_steer():
    # A person filling the upper rows, clear of the near field even after inflation.
    result = navigation.navigate(scene((slice(0, 20), slice(0, 60), PERSON)))
    assert result["heading"] == 2 and result["stop"] is False
    np.testing.assert_allclose(result["sector_costs"], 0.0, atol=0.03)


def test_nearer_rows_weigh_more():
    # Equal obstacle areas: bottom rows on the left, the near field's top rows on the right.
    cost = np.zeros((H, W), np.float32)
    cost[H - 5:, : W // 2] = 1.0
    cost[H // 2: H // 2 + 5, W // 2:] = 1.0
    result = navigation.plan(cost, sectors=2)
    assert result["heading"] == 1
    assert result["sector_costs"][0] > result["sector_costs"][1] > 0.0


def test_sector_costs_are_row_weighted_means():
    rng = np.random.default_rng(0)
    cost = rng.random((9, 12))
    near = cost[4:]  # H // 2 = 4: five near rows, weights 1..5
    weights = np.arange(1, 6, dtype=np.float64)
    expected = [np.sum(weights[:, None] * near[:, c:c + 4]) / (weights.sum() * 4)
                for c in (0, 4, 8)]
    np.testing.assert_allclose(navigation.plan(cost, sectors=3)["sector_costs"], expected)


def test_mirrored_image_gives_mirrored_plan():
    rng = np.random.default_rng(1)
    for sectors in (1, 2, 3, 4, 5, 7):
        cost = rng.random((H, W)).astype(np.float32)
        ahead, mirrored = navigation.plan(cost, sectors), navigation.plan(cost[:, ::-1], sectors)
        np.testing.assert_allclose(mirrored["sector_costs"], ahead["sector_costs"][::-1],
                                   rtol=1e-6)
        assert mirrored["heading"] == sectors - 1 - ahead["heading"]  # random: no ties


def test_ties_go_to_the_strip_nearest_the_centre():
    # Symmetric people at both edges, covering half of strips 0 and 4: strips 1-3 stay clear
    # after inflation, all equally cheap; argmin alone would pick strip 1.
    probs = scene((NEAR, slice(0, 10), PERSON), (NEAR, slice(W - 10, W), PERSON))
    result = navigation.navigate(probs, profile="safe")
    costs = result["sector_costs"]
    assert max(costs[1:4]) - min(costs[1:4]) < navigation.TIE_TOLERANCE
    assert result["heading"] == 2
    # An obstacle in strip 0 only: strips 2-4 tie, strip 2 is nearest the centre.
    assert navigation.navigate(scene((NEAR, slice(0, 20), PERSON)))["heading"] == 2


def test_equally_near_ties_go_to_the_left_one():
    # Four strips over free space: strips 1 and 2 are equally near the centre.
    assert navigation.navigate(scene(), sectors=4)["heading"] == 1
    # A person in the two middle strips: the clear outer strips 0 and 3 tie.
    probs = scene((NEAR, slice(25, 75), PERSON))
    assert navigation.navigate(probs, sectors=4)["heading"] == 0


def test_costs_within_tolerance_count_as_ties():
    cost = np.full((H, W), 0.3, np.float64)
    cost[:, 80:] -= navigation.TIE_TOLERANCE / 10  # strip 4, cheaper by less than the tolerance
    assert navigation.plan(cost)["heading"] == 2
    cost[:, 80:] -= 1e-3  # now really cheaper
    assert navigation.plan(cost)["heading"] == 4


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (31, 17), (60, 100), (48, 160)])
def test_safe_is_never_cheaper_than_adventurous(seed, shape):
    rng = np.random.default_rng(seed)
    alpha = [0.1, 0.5, 2.0][seed % 3]  # peaked to flat probability maps
    probs = rng.dirichlet(np.full(voc.NUM_CLASSES, alpha), size=shape).astype(np.float32)
    safe = navigation.cost_map(probs, "safe")
    adventurous = navigation.cost_map(probs, "adventurous")
    for cost in (safe, adventurous):
        assert cost.shape == shape and cost.dtype == np.float32
        assert cost.min() >= 0.0 and cost.max() <= 1.0
    assert np.all(safe >= adventurous)


@pytest.mark.parametrize("seed", range(3))
def test_safe_is_never_cheaper_than_adventurous_for_any_probabilities_and_costs(seed):
    # Arbitrary (peaked to flat) probability maps and random class costs: the guarantee is by
    # construction, not a property of the VOC table.
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(6, [0.05, 0.5, 5.0][seed]), size=(23, 41)).astype(np.float32)
    costs = rng.random(6)
    safe = navigation.cost_map(probs, "safe", class_costs=costs)
    adventurous = navigation.cost_map(probs, "adventurous", class_costs=costs)
    assert safe.min() >= 0.0 and safe.max() <= 1.0
    assert adventurous.min() >= 0.0 and adventurous.max() <= 1.0
    assert np.all(safe >= adventurous)


@pytest.mark.parametrize("values", ["logits", "negative", "unnormalised"])
def test_values_that_are_not_probabilities_are_refused(values):
    # Logits where "person" is the largest would otherwise read as a mostly clear way.
    probs = scene((NEAR, slice(None), PERSON))
    bad = {"logits": np.log(probs + 1e-3) - 2.0, "negative": -probs, "unnormalised": probs * 3.0}[values]
    with pytest.raises(ValueError, match="expected softmax probabilities"):
        navigation.cost_map(bad)


@pytest.mark.parametrize("threshold", [float("nan"), 1.0, -0.1, None, "0.5"])
def test_a_stop_threshold_that_could_never_or_always_stop_is_refused(threshold):
    with pytest.raises(ValueError, match="stop_threshold"):
        navigation.plan(np.ones((8, 10), np.float32), stop_threshold=threshold)


def test_own_obstacle_classes_stop_even_the_adventurous_profile():
    costs = navigation.class_costs_for(["road", "obstacle", "person", "wall"])
    np.testing.assert_allclose(costs, [0.0, 1.0, 1.0, 1.0])
    everywhere_obstacle = np.eye(4, dtype=np.float32)[np.full((32, 40), 1)]
    assert navigation.navigate(everywhere_obstacle, "adventurous", costs)["stop"] is True


def test_adventurous_parameters_are_all_below_safe():
    # What makes safe >= adventurous hold by construction; a retuned profile must keep it.
    safe, adventurous = navigation.PROFILES["safe"], navigation.PROFILES["adventurous"]
    assert adventurous.cost_scale <= safe.cost_scale
    assert adventurous.uncertainty_weight <= safe.uncertainty_weight
    assert adventurous.clearance <= safe.clearance
    assert safe.uncertainty_weight > 0.0 == adventurous.uncertainty_weight


def test_obstacles_are_inflated_by_the_clearance_margin():
    probs = scene((slice(30, 31), slice(50, 51), PERSON))  # one person pixel
    for profile in PROFILES:
        radius = navigation.PROFILES[profile].radius(W)
        blocked = navigation.cost_map(probs, profile) > 0.5
        rows, cols = np.nonzero(blocked)
        assert (rows.min(), rows.max()) == (30 - radius, 30 + radius)
        assert (cols.min(), cols.max()) == (50 - radius, 50 + radius)
    assert navigation.PROFILES["safe"].radius(W) == 5
    assert navigation.PROFILES["adventurous"].radius(W) == 2
    assert navigation.PROFILES["adventurous"].radius(10) == 1  # never less than a pixel


def test_uncertainty_costs_only_in_the_safe_profile():
    uniform = np.full((8, 10, voc.NUM_CLASSES), 1.0 / voc.NUM_CLASSES, np.float32)
    mean_cost = navigation.class_costs_for(voc.CLASS_NAMES).mean()
    np.testing.assert_allclose(navigation.cost_map(uniform, "adventurous"), 0.7 * mean_cost,
                               rtol=1e-5)
    # mean_cost (~0.71) plus half of the doubt (~0.48) clips to 1.
    np.testing.assert_allclose(navigation.cost_map(uniform, "safe"), 1.0)


def test_max_filter_matches_a_loop_reference():
    rng = np.random.default_rng(2)
    for shape in [(1, 1), (1, 9), (7, 11), (12, 5)]:
        a = rng.random(shape).astype(np.float32)
        for radius in range(0, 8):
            expected = np.empty_like(a)
            for i in range(a.shape[0]):
                for j in range(a.shape[1]):
                    expected[i, j] = a[max(0, i - radius): i + radius + 1,
                                       max(0, j - radius): j + radius + 1].max()
            np.testing.assert_array_equal(navigation.max_filter(a, radius), expected)


def test_voc_defaults_rank_people_above_animals_above_vehicles_above_clutter():
    costs = dict(zip(voc.CLASS_NAMES, navigation.class_costs_for(voc.CLASS_NAMES).tolist()))
    assert set(navigation.VOC_CLASS_COSTS) == set(voc.CLASS_NAMES)
    assert costs["background"] == 0.0
    assert costs["person"] == 1.0 == max(costs.values())
    animals = [costs[n] for n in ("bird", "cat", "cow", "dog", "horse", "sheep")]
    vehicles = [costs[n] for n in ("aeroplane", "bicycle", "boat", "bus", "car", "motorbike",
                                   "train")]
    clutter = [costs[n] for n in ("bottle", "chair", "diningtable", "pottedplant", "sofa",
                                  "tvmonitor")]
    assert 1.0 > min(animals) and min(animals) > max(vehicles)
    assert min(vehicles) > max(clutter) and min(clutter) > 0.0


def test_own_class_names_map_by_name_and_overrides_win():
    costs = navigation.class_costs_for(["road", "sky", "person"])
    assert costs.dtype == np.float32
    np.testing.assert_allclose(costs, [0.0, navigation.UNKNOWN_COST, 1.0])
    assert 0.0 < navigation.UNKNOWN_COST < 1.0
    # Case, spaces and punctuation do not matter; synonyms of people are not "unknown".
    np.testing.assert_allclose(
        navigation.class_costs_for(["Free Space", "Potted plant", "pedestrian", "sky"]),
        [0.0, navigation.CLUTTER_COST, 1.0, navigation.UNKNOWN_COST])
    overridden = navigation.class_costs_for(["road", "obstacle", "person"],
                                            {"obstacle": 0.95, "Road": 0.1})
    np.testing.assert_allclose(overridden, [0.1, 0.95, 1.0], rtol=1e-6)


def test_bad_overrides_are_value_errors():
    names = ["road", "obstacle", "person"]
    with pytest.raises(ValueError, match="curb"):
        navigation.class_costs_for(names, {"curb": 0.5})
    with pytest.raises(ValueError, match="obstacle"):
        navigation.class_costs_for(names, {"obstacle": 1.5})
    with pytest.raises(ValueError, match="road"):
        navigation.class_costs_for(names, {"road": -0.1})


def test_own_data_set_plans_with_class_costs_for():
    labels = np.zeros((H, W), np.int64)  # 0 road, 1 obstacle, 2 person
    labels[NEAR, W - 45:] = 2
    probs = soft_one_hot(labels, num_classes=3)
    costs = navigation.class_costs_for(["road", "obstacle", "person"])
    result = navigation.navigate(probs, class_costs=costs)
    assert result["heading"] < 2 and result["stop"] is False


def test_own_classes_without_class_costs_is_a_value_error():
    probs = soft_one_hot(np.zeros((H, W), np.int64), num_classes=3)
    with pytest.raises(ValueError, match="class_costs"):
        navigation.cost_map(probs)
    with pytest.raises(ValueError, match="class_costs"):
        navigation.cost_map(probs, class_costs={"road": 0.0})


def test_dict_class_costs_override_the_voc_defaults():
    chairs = scene((NEAR, slice(None), CHAIR))
    assert min(navigation.navigate(chairs)["sector_costs"]) > 0.45
    result = navigation.navigate(chairs, class_costs={"chair": 0.0})
    assert max(result["sector_costs"]) < 0.05


def test_invalid_inputs_are_value_errors():
    probs = scene()
    with pytest.raises(ValueError, match="H, W, C"):
        navigation.cost_map(probs[..., 0])
    with pytest.raises(ValueError, match="classes"):
        navigation.cost_map(probs, class_costs=np.zeros(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        navigation.cost_map(probs, class_costs=np.full(voc.NUM_CLASSES, 2.0))
    with pytest.raises(ValueError, match="adventurous.*safe"):
        navigation.cost_map(probs, profile="reckless")
    bad = probs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        navigation.cost_map(bad)
    cost = np.zeros((H, W), np.float32)
    for sectors in (0, -1, W + 1):
        with pytest.raises(ValueError, match="sectors"):
            navigation.plan(cost, sectors=sectors)
    with pytest.raises(ValueError, match="H, W"):
        navigation.plan(cost[0])
    assert navigation.plan(cost, sectors=W)["heading"] == (W - 1) // 2  # one column per strip


def test_navigate_is_plan_of_cost_map():
    probs = scene((NEAR, slice(10, 40), PERSON))
    result = navigation.navigate(probs, profile="adventurous", sectors=3, stop_threshold=0.2)
    cost = navigation.cost_map(probs, profile="adventurous")
    np.testing.assert_array_equal(result.pop("cost_map"), cost)
    assert result == navigation.plan(cost, sectors=3, stop_threshold=0.2)
    assert isinstance(result["heading"], int) and isinstance(result["stop"], bool)
    assert all(isinstance(v, float) for v in result["sector_costs"])


def test_navigation_imports_no_heavy_frameworks():
    # A ROS node imports this: no TensorFlow, Keras, SciPy or OpenCV may come along.
    code = ("import sys; from kit import navigation; heavy = [m for m in ('tensorflow', 'keras', 'scipy', 'cv2',"
            " 'torch', 'jax') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(navigation.__file__).parents[1],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("num_classes", [1, 2, 21])
def test_max_over_classes_is_numpys_max(num_classes):
    p = np.random.default_rng(num_classes).random((7, 9, num_classes), dtype=np.float32)
    np.testing.assert_array_equal(navigation._max_over_classes(p), p.max(axis=-1))
