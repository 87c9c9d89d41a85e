"""predict.py --planner grid: the ground grid in the JSON lines, map_server pairs, the figure,
and the camera flags' errors. One tiny untrained model (MobileNetV2, no pretrained weights)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import predict
from kit import cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FRAMES, WIDTH, HEIGHT = 6, 64, 48
CAMERA = ["--camera-height", "0.6", "--camera-pitch", "35", "--hfov", "100", "--grid-size", "2x2", "--cell", "0.1"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "drive.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (WIDTH, HEIGHT))
    for i in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 120, np.uint8)
        frame[20:40, 5 * i:5 * i + 16] = (40, 200, 90)
        writer.write(frame)
    writer.release()
    return path


def _run(model_path, *argv):
    return predict.main(predict.parse_args(["--model", str(model_path), *map(str, argv)]))


def _check_grid(record):
    assert record["planner"] == "grid" and isinstance(record["stop"], bool)
    assert len(record["arc_costs"]) == 15 and -90 < record["heading_deg"] < 90
    grid = record["grid"]
    assert (grid["width"], grid["height"], grid["resolution"]) == (20, 20, 0.1)
    assert grid["origin"] == [0.0, -1.0, 0.0]
    values = np.array(grid["data"])
    assert values.shape == (400,) and values.min() >= -1 and values.max() <= 100
    assert (values == -1).any() and (values >= 0).any()  # the sides of the view are unknown, the middle is seen


def test_video_lines_carry_the_ground_grid_and_map_pairs_per_predicted_frame(model_path, clip, tmp_path):
    _run(model_path, "--video", clip, "--out", tmp_path, "--navigation", "safe", "--planner", "grid", *CAMERA,
         "--save-grid", "--every", "2")
    lines = [json.loads(line) for line in (tmp_path / "drive.jsonl").read_text().splitlines()]
    assert len(lines) == FRAMES
    for record in lines:
        _check_grid(record)
        assert "sector_costs" not in record
    assert lines[1]["grid"] == lines[0]["grid"]  # a skipped frame reuses the last plan
    grids = tmp_path / "drive_grids"
    assert sorted(p.name for p in grids.iterdir()) == [f"frame_{i:06d}.{s}" for i in (0, 2, 4) for s in ("pgm", "yaml")]
    with Image.open(grids / "frame_000000.pgm") as im:
        assert im.size == (20, 20) and im.mode == "L"
    assert "image: frame_000000.pgm" in (grids / "frame_000000.yaml").read_text()
    capture = cv2.VideoCapture(str(tmp_path / "drive_overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    capture.release()


def test_images_get_the_grid_figure_map_pair_and_log(model_path, tmp_path):
    image = tmp_path / "in" / "street.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    _run(model_path, image, "--out", out, "--navigation", "adventurous", "--planner", "grid", *CAMERA, "--save-grid")
    (record,) = [json.loads(line) for line in (out / "navigation.jsonl").read_text().splitlines()]
    _check_grid(record)
    assert record["image"] == str(image)
    for name in ("street_navigation.png", "street_overlay.jpg", "street_mask.png", "street_grid.pgm", "street_grid.yaml"):
        assert (out / name).is_file(), name
    with Image.open(out / "street_navigation.png") as figure:
        assert figure.size[0] > 3 * figure.size[1]  # four panels side by side


def test_strips_stay_the_default_planner(model_path, clip, tmp_path):
    _run(model_path, "--video", clip, "--out", tmp_path, "--navigation", "safe", "--max-frames", "1")
    (record,) = [json.loads(line) for line in (tmp_path / "drive.jsonl").read_text().splitlines()]
    assert "sector_costs" in record and "grid" not in record


@pytest.mark.parametrize("argv, message", [
    (["--camera-pitch", "35", "--hfov", "100"], "give --camera-height"),
    (["--camera-height", "0.6", "--camera-pitch", "-60", "--hfov", "100"], "above the horizon"),
    (["--camera-height", "0.6", "--camera-pitch", "35", "--calibration", "missing.yaml"], "missing.yaml"),
])
def test_a_camera_that_cannot_work_is_one_error_line(model_path, clip, tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.run(predict.main, predict.parse_args, ["--model", str(model_path), "--video", str(clip), "--out",
                                                   str(tmp_path), "--navigation", "safe", "--planner", "grid", *argv])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--planner", "grid", *CAMERA], "--navigation"),
    (["--navigation", "safe", "--save-grid"], "--planner grid"),
    (["--navigation", "reckless"], "reckless"),
    (["--navigation", "safe", "--planner", "grid", "--grid-size", "4x"], "LENGTHxWIDTH"),
])
def test_flags_that_do_not_go_together_are_usage_errors(model_path, clip, argv, message, capsys):
    with pytest.raises(SystemExit):
        predict.parse_args(["--model", str(model_path), "--video", str(clip), *argv])
    assert message in capsys.readouterr().err
