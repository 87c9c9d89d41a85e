"""Driving scenes (kit/scene.py, the synthetic kind), the closed loop (kit/simulation.py) and
simulate.py on exact masks: NumPy only, a few seconds."""
import json

import numpy as np
import pytest
from PIL import Image

import download_data
import simulate
from kit import data
from kit import ground
from kit import scene
from kit import simulation
from kit import synthetic
from kit import voc


def _one(kind, x, y, size, top, yaw=0.0):
    return scene.World(kind=np.array([scene.KINDS.index(kind)]), centre=np.array([[x, y]], float),
                       size=np.array([size], float), yaw=np.array([yaw]), top=np.array([top]),
                       cls=np.array([scene.KIND_CLASSES[kind]]), floor=(np.full(3, 120.0), 0.5, 10.0),
                       sky=np.full(3, 200.0))


def _pixel(camera, x, y, size):
    u, v = camera.ground_to_pixel(x, y, size, size)
    return int(np.rint(v)), int(np.rint(u))


@pytest.mark.parametrize("kind, size", [("cylinder", (0.3, 0.3)), ("box", (0.3, 0.3))])
def test_rendered_masks_are_exact(kind, size):
    # One obstacle 1.5 m ahead, footprint 1.2-1.8 m. The floor just before it is floor, the ray to
    # a floor point just behind its front face hits the obstacle, and beside it is floor again.
    world = _one(kind, 1.5, 0.0, size, top=0.5)
    camera, n = scene.CAMERA, 160
    image, mask = scene.render(world, (0.0, 0.0, 0.0), camera, (n, n), np.random.default_rng(0),
                               synthetic.driving_colour, synthetic.driving_texture)
    assert image.shape == (n, n, 3) and mask.shape == (n, n) and image.dtype == mask.dtype == np.uint8
    cls = scene.KIND_CLASSES[kind]
    assert mask[_pixel(camera, 1.1, 0.0, n)] == 0
    assert mask[_pixel(camera, 1.3, 0.0, n)] == cls
    assert mask[_pixel(camera, 1.5, 0.8, n)] == 0
    # The mask's obstacle pixels project onto the ground at or behind the front face (IPM's streak).
    v, u = np.nonzero(mask == cls)
    x, _ = camera.pixel_to_ground(u, v, n, n)
    assert np.nanmin(x) >= 1.2 - 0.03
    # Moving the vehicle 1 m forward brings the obstacle 1 m nearer.
    _, nearer = scene.render(world, (1.0, 0.0, 0.0), camera, (n, n), np.random.default_rng(0),
                             synthetic.driving_colour, with_image=False)
    assert nearer[_pixel(camera, 0.3, 0.0, n)] == cls and nearer[_pixel(camera, 0.1, 0.0, n)] == 0


def test_an_empty_world_is_floor_and_sky():
    _, mask = scene.render(_one("post", -5.0, 0.0, (0.1, 0.1), 1.7), (0.0, 0.0, 0.0), scene.CAMERA, (64, 64),
                           np.random.default_rng(0), synthetic.driving_colour, with_image=False)
    assert not mask.any()  # the post is behind the camera


def test_footprint_distance():
    world = _one("box", 0.0, 0.0, (1.0, 0.5), 0.5, yaw=np.pi / 2)  # turned: 1 m half-extent along y
    assert scene.footprint_distance(world, 0.0, 1.5)[0] == pytest.approx(0.5)
    assert scene.footprint_distance(world, 1.0, 0.0)[0] == pytest.approx(0.5)
    assert scene.footprint_distance(world, 0.1, 0.1)[0] == 0.0


def test_driving_kind_writes_a_voc_tree_in_its_own_folder(tmp_path):
    root = download_data.ensure_synthetic(tmp_path, 3, 2, progress=False, kind="driving")
    assert root == download_data.synthetic_root(tmp_path, "driving") != download_data.synthetic_root(tmp_path)
    tree = data.Tree(root, data.ClassTable.voc())
    assert tree.check_complete() == {"train": 3, "full-val": 2}
    values = set()
    for image_id in tree.ids("train"):
        with Image.open(root / data.MASKS_DIR / f"{image_id}.png") as im:
            assert im.mode == "P" and im.size == (synthetic.DRIVING_SIZE,) * 2
            values |= set(np.unique(np.asarray(im)).tolist())
    assert values <= {0, *scene.KIND_CLASSES.values()} and values != {0}  # exact: no void band
    again = download_data.ensure_synthetic(tmp_path, 3, 2, progress=False, kind="driving")  # reused, not rewritten
    assert again == root
    with pytest.raises(data.DataError, match="unknown synthetic kind 'lunar'"):
        download_data.ensure_synthetic(tmp_path, 1, 2, progress=False, kind="lunar")


def test_twenty_episodes_on_exact_masks_the_safe_profile_never_collides():
    settings = simulation.Settings(episodes=20, size=(96, 96), course=8.0)
    results = simulation.run(settings, "safe", simulation.ground_truth)
    summary = simulation.summarise(results)
    assert summary["episodes"] == 20 and summary["collisions"] == 0
    assert summary["min_clearance_m"] > 0
    # It drives, rather than never collide by never moving: most episodes get somewhere.
    assert summary["arrived"] >= 5 and summary["driven_m"] > 50
    assert {r["outcome"] for r in results} <= {"arrived", "stop", "timeout"}


def test_a_blind_segmenter_collides_where_the_exact_masks_do_not(monkeypatch):
    # A row of boxes 1.4 m ahead, 40 m long. A segmenter that sees only floor drives straight
    # into it, and the simulation counts the collision; on the exact masks the safe profile
    # stops or turns along the row, never touching it.
    settings = simulation.Settings(episodes=1, size=(64, 64), course=3.0, max_steps=40)
    monkeypatch.setattr(scene, "random_world", lambda rng, **kwargs: _one("box", 1.6, 0.0, (0.2, 20.0), 0.5))

    def blind(image, mask):
        return simulation.ground_truth(None, np.zeros_like(mask))

    blind.needs_image = False
    crash = simulation.run(settings, "safe", blind)[0]
    assert crash["outcome"] == "collision" and crash["min_clearance"] <= 0
    assert crash["progress"] == pytest.approx(1.4 - 0.2, abs=0.03)  # the body's front touches the face
    assert simulation.summarise([crash])["collisions_per_100m"] == pytest.approx(100 / crash["driven"], abs=0.01)
    safe = simulation.run(settings, "safe", simulation.ground_truth)[0]
    assert safe["outcome"] in ("stop", "timeout") and safe["min_clearance"] > 0 and safe["progress"] < 1.2


def test_simulate_reports_each_profile_and_writes_json(tmp_path, capsys):
    report = simulate.main(simulate.parse_args(["--episodes", "2", "--frame-size", "64", "--course", "2",
                                                "--out", str(tmp_path)]))
    out = capsys.readouterr().out
    assert "| safe |" in out and "| adventurous |" in out and "collisions / 100 m" in out
    saved = json.loads((tmp_path / "simulation.json").read_text())
    assert set(saved["profiles"]) == {"safe", "adventurous"} == set(report["profiles"])
    assert len(saved["profiles"]["safe"]["episodes"]) == 2 and saved["segmenter"] == "exact masks"


@pytest.mark.parametrize("argv, match", [
    (["--camera-pitch", "-60"], "above the horizon"),
    (["--grid-size", "0x4"], "LENGTHxWIDTH"),
])
def test_bad_camera_and_grid_end_in_one_error_line(argv, match, capsys):
    with pytest.raises(SystemExit) as stop:
        simulate.cli.run(simulate.main, simulate.parse_args, ["--episodes", "1", *argv])
    assert stop.value.code != 0
    assert match in capsys.readouterr().err


def test_unknown_profile_is_refused(capsys):
    with pytest.raises(SystemExit):
        simulate.parse_args(["--profiles", "reckless"])
    assert "reckless" in capsys.readouterr().err
    with pytest.raises(ground.GroundError, match="'reckless'"):
        simulation.run(simulation.Settings(episodes=1), "reckless", simulation.ground_truth)


def test_voc_is_the_simulations_class_table():
    probs = simulation.ground_truth(None, np.array([[0, voc.CLASS_NAMES.index("person")]], np.uint8))
    assert probs.shape == (1, 2, voc.NUM_CLASSES) and probs[0, 1, voc.CLASS_NAMES.index("person")] == 1.0


def test_train_demo_takes_the_driving_kind(tmp_path):
    import train  # TensorFlow comes with it: only this test pays for it

    args = train.parse_args(["--demo", "--synthetic-kind", "driving", "--num-train", "2", "--num-val", "2",
                             "--data-dir", str(tmp_path)])
    settings = train.resolve_config(args)
    assert settings["dataset"] == "synthetic" and settings["synthetic_kind"] == "driving"
    tree = train.data_tree(settings, progress=False)
    assert tree.root == download_data.synthetic_root(tmp_path, "driving")
    assert train.resolve_config(train.parse_args(["--demo"]))["synthetic_kind"] == "objects"  # the default stays
