"""predict.py on videos and cameras (video.py), navigation on images, and evaluate's navigation figure.

One tiny untrained model (64 px, MobileNetV2 without pretrained weights) serves the module.
"""
import json
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import config
import download_data
import evaluate
import predict
import video
import voc
from data import ClassTable
from model import build_deeplabv3

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FRAMES, WIDTH, HEIGHT, FPS = 10, 64, 48, 12.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    model = build_deeplabv3((None, None, 3), backbone="mobilenetv2", backbone_weights=None, aspp_filters=16)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 10-frame mp4v video written by OpenCV: a square moving across a gradient."""
    path = tmp_path_factory.mktemp("video") / "drive.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(FRAMES):
        frame = np.tile(np.linspace(0, 255, WIDTH, dtype=np.uint8)[None, :, None], (HEIGHT, 1, 3))
        frame[10:30, 4 * i:4 * i + 20] = (40, 200, 90)
        writer.write(frame)
    writer.release()
    return path


def _frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    assert fps == pytest.approx(FPS)
    return frames


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(model_path, *argv):
    return predict.main(predict.parse_args(["--model", str(model_path), *map(str, argv)]))


def test_video_gives_every_frame_annotated_and_a_json_line_each(model_path, clip, tmp_path):
    _run(model_path, "--video", clip, "--out", tmp_path)
    frames = _frames(tmp_path / "drive_overlay.mp4")
    assert len(frames) == FRAMES and all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)
    lines = _lines(tmp_path / "drive.jsonl")
    assert [r["frame"] for r in lines] == list(range(FRAMES))
    assert [r["time_ms"] for r in lines] == pytest.approx([1000 * i / FPS for i in range(FRAMES)], abs=1e-3)
    for record in lines:
        assert record["predicted"] is True and "heading" not in record
        assert set(record["class_fractions"]) == set(voc.CLASS_NAMES)
        assert sum(record["class_fractions"].values()) == pytest.approx(1, abs=1e-4)


def test_every_third_frame_predicted_still_writes_all_frames(model_path, clip, tmp_path):
    _run(model_path, "--video", clip, "--out", tmp_path, "--every", "3", "--smooth", "0.5")
    assert len(_frames(tmp_path / "drive_overlay.mp4")) == FRAMES
    lines = _lines(tmp_path / "drive.jsonl")
    assert [r["predicted"] for r in lines] == [i % 3 == 0 for i in range(FRAMES)]
    assert lines[1]["class_fractions"] == lines[0]["class_fractions"]  # reused, not recomputed


def test_navigation_adds_heading_stop_and_sector_costs(model_path, clip, tmp_path):
    _run(model_path, "--video", clip, "--out", tmp_path, "--navigation", "adventurous")
    lines = _lines(tmp_path / "drive.jsonl")
    assert len(lines) == FRAMES and len(_frames(tmp_path / "drive_overlay.mp4")) == FRAMES
    for record in lines:
        assert 0 <= record["heading"] < 5 and isinstance(record["stop"], bool)
        assert len(record["sector_costs"]) == 5 and all(0 <= c <= 1 for c in record["sector_costs"])


def test_smoothing_averages_probabilities_over_time(tmp_path, clip, monkeypatch):
    """Constant-per-frame fake probabilities: with A = 0.5 frame 1's are the mean of frames 0 and 1."""
    classes = ClassTable.voc()
    seen = []

    def predict_fn(x):
        probs = np.zeros(x.shape[1:3] + (classes.num_classes,), np.float32)
        probs[..., 1 if len(seen) % 2 else 0] = 1.0  # class 0, then class 1, alternating
        seen.append(1)
        return probs

    frames = []
    original = video._Annotator.__call__

    def spy(self, frame, probs):
        out = original(self, frame, probs)
        frames.append(self.smoothed[0, 0].copy())  # what the mask and navigation were computed from
        return out

    monkeypatch.setattr(video._Annotator, "__call__", spy)
    video.run_stream(predict_fn, clip, tmp_path, classes, predict.overlay, smooth=0.5, max_frames=3)
    assert frames[0][0] == 1.0 and frames[1][:2].tolist() == [0.5, 0.5] and frames[2][:2].tolist() == [0.75, 0.25]


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5", "abc"])
def test_smooth_outside_zero_to_one_is_an_error(model_path, clip, tmp_path, value, capsys):
    with pytest.raises(SystemExit):
        predict.parse_args(["--model", str(model_path), "--video", str(clip), "--smooth", value])
    assert "--smooth" in capsys.readouterr().err
    with pytest.raises(video.VideoError, match=r"\[0, 1\)"):
        video.check_smooth(1.0)


def test_exactly_one_source_kind(model_path, clip, capsys):
    for argv in ([], ["a.jpg", "--video", str(clip)], ["--video", str(clip), "--camera", "0"]):
        with pytest.raises(SystemExit):
            predict.parse_args(["--model", str(model_path), *argv])
        assert "exactly one source" in capsys.readouterr().err


def test_camera_that_cannot_open_is_an_error(model_path, tmp_path, monkeypatch):
    class Closed:
        def __init__(self, index):
            self.index = index

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr(video.cv2, "VideoCapture", Closed)
    with pytest.raises(video.VideoError, match="cannot open camera 0"):
        _run(model_path, "--camera", "0", "--out", tmp_path)


def test_camera_error_ends_with_one_error_line(model_path, tmp_path, monkeypatch, capsys):
    import cli

    monkeypatch.setattr(video.cv2, "VideoCapture", lambda index: type("C", (), {
        "isOpened": lambda self: False, "release": lambda self: None})())
    with pytest.raises(SystemExit) as exit_info:
        cli.run(predict.main, predict.parse_args, ["--model", str(model_path), "--camera", "7",
                                                   "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: cannot open camera 7")


def test_unreadable_or_missing_video_is_an_error_naming_it(model_path, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(video.VideoError, match="junk.mp4"):
        _run(model_path, "--video", junk, "--out", tmp_path / "o")
    with pytest.raises(video.VideoError, match="missing.mp4"):
        _run(model_path, "--video", tmp_path / "missing.mp4", "--out", tmp_path / "o")


def test_navigation_on_images_writes_figure_log_and_overlay(model_path, tmp_path):
    Image.new("RGB", (70, 52), (120, 130, 140)).save(tmp_path / "road.jpg")
    _run(model_path, tmp_path / "road.jpg", "--out", tmp_path / "out", "--navigation", "safe")
    out = tmp_path / "out"
    assert (out / "road_navigation.png").is_file() and Image.open(out / "road_overlay.jpg").size == (70, 52)
    (record,) = _lines(out / predict.NAVIGATION_LOG)
    assert record["image"].endswith("road.jpg") and len(record["sector_costs"]) == 5 and "stop" in record


def test_evaluate_writes_the_navigation_figure(model_path, tmp_path):
    root = download_data.ensure_synthetic(tmp_path / "data", 4, 4, progress=False, min_size=64, max_size=80)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({
        "data_root": str(root), "data_kind": "synthetic", "classes": ClassTable.voc().to_json(),
        "input_size": 64, "output_stride": 16}))
    evaluate.main(evaluate.parse_args(["--run-dir", str(run_dir), "--model", str(model_path), "--num-figures", "2",
                                       "--navigation", "adventurous"]))
    assert (run_dir / "navigation.png").is_file() and (run_dir / "predictions.png").is_file()
    assert config.load_run_config(run_dir)["input_size"] == 64


def test_sigterm_mid_video_still_closes_a_playable_video(clip, tmp_path):
    """A supervisor's SIGTERM ends the stream like Ctrl-C: the frames written so far play back."""
    classes = ClassTable.voc()
    calls = []

    def predict_fn(x):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this (the main) thread
        probs = np.zeros(x.shape[1:3] + (classes.num_classes,), np.float32)
        probs[..., 0] = 1.0
        return probs

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        video.run_stream(predict_fn, clip, tmp_path, classes, predict.overlay)
    assert signal.getsignal(signal.SIGTERM) is previous  # restored
    written = _frames(tmp_path / "drive_overlay.mp4")  # an mp4 killed mid-write has no index: 0 frames
    assert 0 < len(written) < FRAMES
    assert len(_lines(tmp_path / "drive.jsonl")) == len(written)


def test_images_too_small_to_segment_are_reported_and_the_rest_processed(model_path, tmp_path, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    Image.new("RGB", (40, 32)).save(tmp_path / "fine.png")
    with pytest.raises(SystemExit, match="1 of 2 image"):
        _run(model_path, tmp_path / "tiny.png", tmp_path / "fine.png", "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert "tiny.png" in err and "too small to segment" in err
    assert (tmp_path / "out" / "fine_mask.png").is_file() and not (tmp_path / "out" / "tiny_mask.png").exists()


def test_class_costs_override_by_name_and_bad_ones_are_refused(model_path, clip, tmp_path):
    _run(model_path, "--video", clip, "--out", tmp_path, "--navigation", "safe", "--max-frames", "1",
         "--class-costs", "background=1")  # the only traversable class made a wall
    (record,) = _lines(tmp_path / "drive.jsonl")
    assert record["stop"] is True
    with pytest.raises(config.ConfigError, match="--class-costs"):
        _run(model_path, "--video", clip, "--out", tmp_path, "--navigation", "safe", "--class-costs", "road=0")
