"""kit/ground.py: the camera against hand-computed ground points, the grid, the map_server pair,
and the arc planner on crafted cost maps. Pure NumPy and fast."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kit import ground
from kit import simulation

# A camera 1 m up, pitched 45 degrees down, 90 degrees across a 100 x 100 frame: fx = fy = 50,
# pixel centres at integers, so the principal point is (49.5, 49.5).
CAM = ground.Camera(height=1.0, pitch=45.0, hfov=90.0)
SIZE = 100


@pytest.mark.parametrize("u, v, x, y", [
    (49.5, 49.5, 1.0, 0.0),  # the optical axis meets the ground 1 m ahead (1 m / tan 45)
    (49.5, 99.5, 0.0, 0.0),  # 45 + 45 degrees below the horizon: straight down
    # v = cy + fy tan(15 deg): 60 degrees below the horizon, 1 / tan 60 = 0.5774 m ahead
    (49.5, 49.5 + 50 * math.tan(math.radians(15)), 1.0 / math.tan(math.radians(60)), 0.0),
    # a = 1 on the optical axis' row: depth sqrt(2) along the axis, so 1 m ahead and sqrt(2) m to the right
    (99.5, 49.5, 1.0, -math.sqrt(2)),
    (-0.5, 49.5, 1.0, math.sqrt(2)),  # the mirror image: left is +y
])
def test_pixels_map_to_hand_computed_ground_points(u, v, x, y):
    gx, gy = CAM.pixel_to_ground(u, v, SIZE, SIZE)
    assert (float(gx), float(gy)) == pytest.approx((x, y), abs=1e-9)
    pu, pv = CAM.ground_to_pixel(x, y, SIZE, SIZE)  # and back
    assert (float(pu), float(pv)) == pytest.approx((u, v), abs=1e-6)


def test_pixels_at_and_above_the_horizon_see_no_ground():
    # The horizon is at v = cy - fy tan 45 = -0.5, the frame's top edge; a camera pitched 20 deg sees it inside.
    cam = ground.Camera(height=1.0, pitch=20.0, hfov=90.0)
    horizon = cam.horizon_row(SIZE, SIZE)
    assert horizon == pytest.approx(49.5 - 50 * math.tan(math.radians(20)))
    x, _ = cam.pixel_to_ground([49.5] * 3, [horizon - 5, horizon, horizon + 5], SIZE, SIZE)
    assert np.isnan(x[0]) and np.isnan(x[1]) and x[2] > 0


def test_calibrated_intrinsics_scale_with_the_frame():
    cam = ground.Camera(height=1.0, pitch=45.0, intrinsics=(100.0, 100.0, 99.5, 99.5), calibrated_size=(200, 200))
    assert cam.matrix(100, 100) == pytest.approx((50.0, 50.0, 49.5, 49.5))
    assert float(cam.pixel_to_ground(49.5, 49.5, 100, 100)[0]) == pytest.approx(1.0)


def test_projection_puts_each_pixel_cost_in_its_ground_cell():
    grid = ground.Grid(length=4.0, width=4.0, cell=0.1)
    projector = ground.Projector(CAM, grid, (SIZE, SIZE))
    cost = np.zeros((SIZE, SIZE), np.float32)
    v, u = 80, 30  # one expensive pixel; where does it land?
    cost[v, u] = 1.0
    cells = projector.project(cost)
    x, y = CAM.pixel_to_ground(u, v, SIZE, SIZE)
    row, col = int((y - grid.origin[1]) // grid.cell), int((x - grid.origin[0]) // grid.cell)
    assert cells[row, col] == 1.0
    assert np.nansum(cells) == 1.0  # nowhere else
    # Cells behind the frame's sides stay unknown: at x = 0.5 m the view is |y| <= ~0.7 m wide.
    assert np.isnan(cells[0, 5]) and np.isnan(cells[-1, 5]) and cells[20, 5] == 0.0


def test_a_camera_looking_above_the_horizon_is_refused():
    with pytest.raises(ground.GroundError, match=r"above the horizon.*pitch -50 deg"):
        ground.Projector(ground.Camera(height=1.0, pitch=-50.0, hfov=90.0), ground.Grid(), (SIZE, SIZE))


def test_a_grid_out_of_view_is_refused():
    # Pitched 5 degrees down with a 10 degree lens, 1 m up, the nearest ground it sees is
    # 1 / tan(10 deg) = 5.7 m ahead: beyond a 4 m grid.
    camera = ground.Camera(height=1.0, pitch=5.0, hfov=10.0)
    with pytest.raises(ground.GroundError, match="4x4 m grid does not fit the camera's view"):
        ground.Projector(camera, ground.Grid(length=4.0, width=4.0), (SIZE, SIZE))
    ground.Projector(camera, ground.Grid(length=8.0, width=4.0), (SIZE, SIZE))  # an 8 m one does


@pytest.mark.parametrize("kwargs, match", [
    ({"height": 0.0, "pitch": 30.0, "hfov": 90.0}, "camera height"),
    ({"height": 1.0, "pitch": 95.0, "hfov": 90.0}, "pitch"),
    ({"height": 1.0, "pitch": 30.0, "hfov": 180.0}, "field of view"),
    ({"height": 1.0, "pitch": 30.0}, "either"),
])
def test_bad_cameras_are_ground_errors_naming_the_value(kwargs, match):
    with pytest.raises(ground.GroundError, match=match):
        ground.Camera(**kwargs)


@pytest.mark.parametrize("text, expected", [("4x4", (4.0, 4.0)), ("6 x 3", (6.0, 3.0)), ("5", (5.0, 5.0))])
def test_grid_sizes_parse(text, expected):
    assert ground.parse_size(text) == expected


@pytest.mark.parametrize("text", ["4x", "0x4", "ax4", "4x4x4", "-1"])
def test_bad_grid_sizes_are_refused(text):
    with pytest.raises(ground.GroundError, match="LENGTHxWIDTH"):
        ground.parse_size(text)


def test_grid_layout_is_occupancy_grids():
    grid = ground.Grid(length=4.0, width=3.0, cell=0.5)
    assert grid.shape == (6, 8)  # rows across y, columns along x
    assert grid.origin == (0.0, -1.5, 0.0)
    x, y = grid.centres()
    assert (x[0, 0], y[0, 0]) == (0.25, -1.25)  # row 0 is the rightmost strip (y = -1.5 .. -1)
    assert (x[0, 1], y[1, 0]) == (0.75, -0.75)  # +x along a row


def test_occupancy_values_are_nav2s():
    cells = np.array([[0.0, 0.004, 0.5, 1.0, np.nan]], np.float32)
    np.testing.assert_array_equal(ground.occupancy(cells), [[0, 0, 50, 100, -1]])
    record = ground.grid_record(np.zeros((80, 80)), ground.Grid())
    assert record["width"] == record["height"] == 80 and record["resolution"] == 0.05
    assert len(record["data"]) == 6400 and record["origin"] == [0.0, -2.0, 0.0]


def _read_map_yaml(path: Path) -> dict:
    """map_server's YAML, parsed to the keys nav2's map_io reads (a flat mapping of scalars and one list)."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        assert sep, f"not a YAML mapping line: {line!r}"
        value = value.strip()
        if value.startswith("["):
            values[key.strip()] = [float(v) for v in value.strip("[]").split(",")]
        else:
            try:
                values[key.strip()] = float(value) if any(c in value for c in ".e") else int(value)
            except ValueError:
                values[key.strip()] = value
    return values


def _load_like_map_server(yaml_path: Path) -> tuple[dict, np.ndarray]:
    """nav2_map_server map_io's loadMapFromFile, in NumPy: (YAML, OccupancyGrid data (rows, cols))."""
    meta = _read_map_yaml(yaml_path)
    assert {"image", "resolution", "origin", "negate", "occupied_thresh", "free_thresh"} <= set(meta)
    with Image.open(yaml_path.parent / meta["image"]) as im:
        assert im.format == "PPM" and im.mode == "L"  # a binary greyscale PGM
        shade = np.asarray(im, np.float64) / 255.0
    occ = shade if meta["negate"] else 1.0 - shade
    mode = meta.get("mode", "trinary")
    if mode == "trinary":
        data = np.where(occ > meta["occupied_thresh"], 100, np.where(occ < meta["free_thresh"], 0, -1))
    else:
        assert mode == "raw"
        value = np.round(shade * 255)
        data = np.where((value >= 0) & (value <= 100), value, -1)
    return meta, data[::-1].astype(np.int64)  # the image's top row is the grid's last row


@pytest.mark.parametrize("mode", ground.MAP_MODES)
def test_map_pair_loads_with_pil_and_parses_as_map_server_reads_it(tmp_path, mode):
    grid = ground.Grid(length=1.0, width=0.6, cell=0.1)  # 6 rows, 10 columns
    cells = np.zeros(grid.shape, np.float32)
    cells[0, :3] = 1.0  # an obstacle on the right, near
    cells[5, 9] = 0.8  # the far left corner
    cells[2, 4] = 0.5  # neither free nor occupied for trinary
    cells[:, 7] = np.nan  # unseen
    pgm, yaml = ground.save_map(cells, grid, tmp_path / "frame", mode=mode)
    assert (pgm.name, yaml.name) == ("frame.pgm", "frame.yaml")
    assert pgm.read_bytes().startswith(b"P5")
    meta, data = _load_like_map_server(yaml)
    assert meta["image"] == "frame.pgm" and meta["mode"] == mode
    assert meta["resolution"] == pytest.approx(0.1) and meta["origin"] == pytest.approx([0.0, -0.3, 0.0])
    # 0.196, not nav2's older 0.25, under which map_saver's unknown grey (205) reloads as free.
    assert meta["negate"] == 0 and (meta["occupied_thresh"], meta["free_thresh"]) == (0.65, 0.196)
    values = ground.occupancy(cells).astype(np.int64)
    if mode == "raw":
        np.testing.assert_array_equal(data, values)  # every value comes back
    else:
        expected = np.where(values < 0, -1, np.where(values >= 65, 100, np.where(values <= 25, 0, -1)))
        np.testing.assert_array_equal(data, expected)
    assert data[0, 0] == 100 and data[1, 1] == 0 and data[3, 7] == -1
    assert data[5, 9] == (80 if mode == "raw" else 100) and data[2, 4] == (50 if mode == "raw" else -1)


# --- the arc planner -------------------------------------------------------------------------------

def _scene_cost(camera, size, box):
    """An (H, W) cost map that is 1 wherever the pixel's ground point lies in box = (x0, x1, y0, y1)."""
    v, u = np.mgrid[0:size, 0:size]
    x, y = camera.pixel_to_ground(u, v, size, size)
    x0, x1, y0, y1 = box
    with np.errstate(invalid="ignore"):
        return ((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).astype(np.float32)


SIM_CAMERA = ground.Camera(height=0.6, pitch=35.0, hfov=100.0)


@pytest.mark.parametrize("profile", sorted(ground.GRID_PROFILES))
def test_obstacle_left_of_centre_turns_right_and_keeps_the_width_clear(profile):
    grid = ground.Grid(length=4.0, width=4.0, cell=0.05)
    size = 160
    # A 0.6 m wide obstacle 1.0-1.6 m ahead, from 0.1 m left of the centre line to 0.7 m left.
    box = (1.0, 1.6, 0.1, 0.7)
    cells = ground.Projector(SIM_CAMERA, grid, (size, size)).project(_scene_cost(SIM_CAMERA, size, box))
    planner = ground.ArcPlanner(grid, profile, vehicle_width=0.4)
    result = planner.plan(cells)
    assert result["stop"] is False
    assert result["curvature"] < 0 and result["heading_deg"] < 0  # to the right
    assert result["arc_costs"][len(planner.curvatures) // 2] == 1.0  # straight on is blocked
    # The chosen arc keeps half the vehicle's width (and the profile's clearance) off the obstacle.
    points = ground.arc_points(result["curvature"], planner.lengths[result["arc"]], 0.01)
    dx = np.maximum(np.maximum(box[0] - points[:, 0], points[:, 0] - box[1]), 0)
    dy = np.maximum(np.maximum(box[2] - points[:, 1], points[:, 1] - box[3]), 0)
    assert np.hypot(dx, dy).min() >= 0.2 + planner.profile.clearance - grid.cell


def test_mirrored_obstacle_turns_left():
    grid = ground.Grid()
    cells = ground.Projector(SIM_CAMERA, grid, (160, 160)).project(
        _scene_cost(SIM_CAMERA, 160, (1.0, 1.6, -0.7, -0.1)))
    result = ground.ArcPlanner(grid, "safe").plan(cells)
    assert result["curvature"] > 0 and result["stop"] is False


def test_free_ground_goes_straight_and_a_wall_stops():
    grid = ground.Grid()
    projector = ground.Projector(SIM_CAMERA, grid, (160, 160))
    planner = ground.ArcPlanner(grid, "safe")
    free = planner.plan(projector.project(np.zeros((160, 160), np.float32)))
    assert free["curvature"] == 0.0 and free["stop"] is False and free["heading_deg"] == 0.0
    wall = planner.plan(projector.project(_scene_cost(SIM_CAMERA, 160, (0.8, 1.2, -3.0, 3.0))))
    assert wall["stop"] is True and wall["arc"] is None


def test_clutter_stops_safe_but_not_adventurous():
    # 0.42 is the adventurous cost of a chair (0.6 x 0.7), a safe chair costs 0.6: both above
    # safe's 0.35, both below adventurous' 0.5.
    grid = ground.Grid()
    projector = ground.Projector(SIM_CAMERA, grid, (160, 160))
    cells = projector.project(0.42 * _scene_cost(SIM_CAMERA, 160, (0.8, 1.2, -3.0, 3.0)))
    assert ground.ArcPlanner(grid, "safe").plan(cells)["stop"] is True
    assert ground.ArcPlanner(grid, "adventurous").plan(cells)["stop"] is False


def test_the_preferred_curvature_breaks_ties():
    grid = ground.Grid()
    planner = ground.ArcPlanner(grid, "safe")
    cells = np.zeros(grid.shape, np.float32)
    assert planner.plan(cells, prefer=1.0)["curvature"] > 0


def test_unknown_profile_is_a_ground_error_naming_it():
    with pytest.raises(ground.GroundError, match="'reckless'"):
        ground.ArcPlanner(ground.Grid(), "reckless")


def test_grid_profiles_match_the_cost_map_profiles():
    from kit import navigation
    assert set(ground.GRID_PROFILES) == set(navigation.PROFILES)
    safe, adventurous = ground.GRID_PROFILES["safe"], ground.GRID_PROFILES["adventurous"]
    assert safe.clearance > adventurous.clearance and safe.max_cost < adventurous.max_cost


def test_lookahead_beyond_the_grid_is_refused():
    with pytest.raises(ground.GroundError, match="lookahead"):
        ground.ArcPlanner(ground.Grid(length=1.0), lookahead=2.0)


def test_ground_imports_no_heavy_frameworks():
    code = ("import sys; from kit import ground, scene, simulation; heavy = [m for m in ('tensorflow', 'keras', "
            "'scipy', 'cv2', 'matplotlib') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(ground.__file__).parents[1],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# What ROS's camera_calibration writes (ost.yaml), here for a 640 x 480 camera.
OST_YAML = """image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [320.0, 0.0, 319.5,
         0.0, 320.0, 239.5,
         0.0, 0.0, 1.0]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.0, 0.0, 0.0, 0.0, 0.0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
projection_matrix:
  rows: 3
  cols: 4
  data: [320.0, 0.0, 319.5, 0.0, 0.0, 320.0, 239.5, 0.0, 0.0, 0.0, 1.0, 0.0]
"""


def test_ros_calibration_yaml_gives_the_intrinsics(tmp_path):
    path = tmp_path / "ost.yaml"
    path.write_text(OST_YAML)
    intrinsics, size = ground.load_calibration(path)
    assert intrinsics == (320.0, 320.0, 319.5, 239.5) and size == (640, 480)
    # fx = 320 at 640 px is a 90 degree lens: the same ground points as --hfov 90.
    calibrated = ground.Camera(height=1.0, pitch=30.0, intrinsics=intrinsics, calibrated_size=size)
    by_fov = ground.Camera(height=1.0, pitch=30.0, hfov=90.0)
    for w, h in ((640, 480), (320, 240)):
        assert calibrated.matrix(w, h) == pytest.approx(by_fov.matrix(w, h))


def test_json_calibration_and_distortion_warning(tmp_path):
    path = tmp_path / "camera.json"
    path.write_text('{"image_width": 640, "image_height": 480, "K": [320, 0, 319.5, 0, 320, 239.5, 0, 0, 1], '
                    '"D": [0.1, 0, 0, 0, 0]}')
    with pytest.warns(RuntimeWarning, match="distortion"):
        assert ground.load_calibration(path) == ((320.0, 320.0, 319.5, 239.5), (640, 480))


@pytest.mark.parametrize("text", ["image_width: 640\nimage_height: 480\n", "camera_matrix:\n  data: [1, 2]\n"])
def test_calibration_without_a_camera_matrix_is_refused(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ground.GroundError, match="bad.yaml"):
        ground.load_calibration(path)


def test_a_calibration_with_a_byte_order_mark_reads_and_a_binary_one_is_an_error(tmp_path):
    ost = ("image_width: 128\r\nimage_height: 96\r\ncamera_name: cam\r\ncamera_matrix:\r\n  rows: 3\r\n"
           "  cols: 3\r\n  data: [60, 0, 64, 0, 60, 48, 0, 0, 1]\r\n")
    path = tmp_path / "ost.yaml"
    path.write_bytes("\ufeff".encode("utf-8") + ost.encode())
    assert ground.load_calibration(path) == ((60.0, 60.0, 64.0, 48.0), (128, 96))
    path.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not a calibration")
    with pytest.raises(ground.GroundError, match=rf"calibration {path} is not UTF-8 text"):
        ground.load_calibration(path)


def test_a_vehicle_wider_than_the_grid_is_refused():
    """Its body would sweep cells beyond the grid's sides, whose obstacles it never sees: the
    adventurous profile drove on and collided every step."""
    with pytest.raises(ground.GroundError, match=r"narrower than the grid's 0.3 m across .*got 0.4 m"):
        ground.ArcPlanner(ground.Grid(4.0, 0.3, 0.05), "adventurous", vehicle_width=0.4)
    ground.ArcPlanner(ground.Grid(4.0, 0.6, 0.05), "adventurous", vehicle_width=0.4)


@pytest.mark.parametrize("name", ["step", "course", "vehicle_width"])
@pytest.mark.parametrize("value", [math.inf, math.nan, 0.0])
def test_simulation_lengths_must_be_finite_and_positive(name, value):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ground.GroundError, match=rf"{flag} must be a positive number of metres, got {value}"):
        simulation.Settings(**{name: value})
