"""predict.py on videos and cameras (kit/video.py), navigation on images, and evaluate's navigation figure.

One tiny untrained model (64 px, MobileNetV2 without pretrained weights) serves the module.
"""
import json
import os
import signal
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kit import config
from kit import inference
from kit import navigation
from kit import overlay
import download_data
import evaluate
import predict
from kit import video
from kit import voc
from kit.data import ClassTable

from conftest import read_video  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FRAMES, WIDTH, HEIGHT, FPS = 10, 64, 48, 12.0


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
    frames, fps = read_video(path)
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


class _Alternating:
    """A model stand-in whose logits make class 0 certain, then class 1, alternating per call."""

    input_shape, output_shape, traceable = (None, None, None, 3), (None, None, None, 21), False

    def __init__(self):
        self.calls = 0

    def __call__(self, x, training=False):
        logits = np.zeros(tuple(x.shape[:3]) + (21,), np.float32)
        logits[..., self.calls % 2] = 100.0  # softmax: 1 and 0, to within float32 rounding (Eigen's gives 1 - 6e-8)
        self.calls += 1
        return logits


def test_smoothing_averages_probabilities_over_time():
    """With A = 0.5 frame 1's probabilities are the mean of frames 0 and 1, frame 2's 0.75 / 0.25:
    seen through a cost map that costs class 1 alone, with no uncertainty term."""
    costs = np.zeros(voc.NUM_CLASSES, np.float32)
    costs[1] = 1.0
    nav = video.NavigationSpec(navigation.Profile(cost_scale=1.0, uncertainty_weight=0.0, clearance=0.01), costs)
    step = video.frame_model(inference.Predictor(_Alternating()), smooth=0.5, nav=nav)
    x = np.zeros((1, 16, 18, 3), np.float32)
    seen = [step(x) for _ in range(3)]
    assert all(p.probs is None and p.cost.shape == (16, 18) for p in seen)  # only the cost map leaves the graph
    np.testing.assert_allclose([p.cost[0, 0] for p in seen], [0.0, 0.5, 0.25], rtol=0, atol=1e-6)
    assert [int(p.mask[0, 0]) for p in seen] == [0, 0, 0]  # a tie goes to the first class
    bigger = step(np.zeros((1, 20, 18, 3), np.float32))  # a new frame size starts afresh: class 1 alone
    np.testing.assert_allclose(bigger.cost[0, 0], 1.0, rtol=0, atol=1e-6)
    assert int(bigger.mask[0, 0]) == 1
    plain = video.frame_model(inference.Predictor(_Alternating()), smooth=0.5)(x)
    assert plain.probs is None and plain.cost is None and plain.mask.shape == (16, 18)  # nothing else copied out


@pytest.mark.parametrize("profile", sorted(navigation.PROFILES))
@pytest.mark.parametrize("width", [18, 64, 101, 480])  # at 480 the safe window (49) is taller than the map
def test_cost_map_in_the_graph_matches_navigation_cost_map(profile, width):
    """inference.cost_map_graph is navigation.cost_map step for step: the expected class cost,
    the uncertainty term, the clip and the clearance max filter (cut at the borders)."""
    rng = np.random.default_rng(width)
    logits = rng.normal(0, 3, (2, 23, width, voc.NUM_CLASSES)).astype(np.float32)
    logits[:, 5:9, 3:7] += 40.0 * (np.arange(voc.NUM_CLASSES) == 15)  # a confident person: inflation shows
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    costs = navigation.class_costs_for(voc.CLASS_NAMES)
    spec = navigation.PROFILES[profile]
    got = inference.cost_map_graph(inference.tf.constant(probs), spec, inference.tf.constant(costs)).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], navigation.cost_map(probs[b], profile, costs), rtol=0, atol=2e-6)


@pytest.mark.parametrize("window", [1, 3, 5, 9, 27, 41])
def test_window_max_is_the_brute_force_maximum_cut_at_the_border(window):
    """inference.window_max against a plain loop, along either axis, eagerly and compiled by
    XLA (as finish_frame runs it), for windows narrower and wider than the axis (23 long)."""
    x = np.random.default_rng(window).normal(size=(2, 23, 30)).astype(np.float32)
    r = window // 2
    for axis in (1, 2):
        moved = np.moveaxis(x, axis, -1)
        want = np.stack([moved[..., max(0, i - r):i + r + 1].max(-1) for i in range(moved.shape[-1])], -1)
        want = np.moveaxis(want, -1, axis)
        compiled = inference.tf.function(lambda t, a=axis: inference.window_max(t, a, window), jit_compile=True)
        for got in (inference.window_max(inference.tf.constant(x), axis, window), compiled(inference.tf.constant(x))):
            np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(ValueError, match="odd"):
        inference.window_max(inference.tf.constant(x), 1, 4)


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
    from kit import cli

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
        return video.Prediction(np.zeros(x.shape[1:3], np.uint8))

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        video.run_stream(predict_fn, clip, tmp_path, classes)
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


def test_plain_stream_gets_masks_from_the_model_and_navigation_gets_a_cost_map(model_path):
    model = inference.load_model(model_path)
    rng = np.random.default_rng(0)
    # An untrained model's logits nearly tie everywhere: a random classifier bias makes them decide.
    kernel, bias = model.get_layer("classifier").get_weights()
    model.get_layer("classifier").set_weights([kernel, rng.normal(0, 1, bias.shape).astype(np.float32)])
    predictor = inference.Predictor(model)
    x = rng.uniform(0, 255, (1, HEIGHT, WIDTH, 3)).astype(np.float32)
    logits = np.asarray(predictor.model(x, training=False))[0]  # (H, W, C)
    plain = video.frame_model(predictor)(x)
    assert plain.mask.shape == (HEIGHT, WIDTH) and plain.mask.dtype == np.uint8
    assert plain.probs is None and plain.cost is None
    np.testing.assert_array_equal(plain.mask, logits.argmax(-1))
    costs = navigation.class_costs_for(voc.CLASS_NAMES)
    nav = video.NavigationSpec("safe", costs)
    got = video.frame_model(predictor, nav=nav)(x)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert got.probs is None and got.cost.shape == (HEIGHT, WIDTH) and got.cost.dtype == np.float32
    np.testing.assert_allclose(got.cost, navigation.cost_map(probs, "safe", costs), rtol=0, atol=1e-5)
    # XLA's softmax rounds differently from NumPy's: compare where the logits decide.
    top2 = np.sort(logits, axis=-1)[..., -2:]  # (H, W, 2)
    decided = top2[..., 1] - top2[..., 0] > 1e-4
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(got.mask[decided], logits.argmax(-1)[decided])
    annotate = video._Annotator(ClassTable.voc(), 0.5, nav)
    _, record = annotate(x[0].astype(np.uint8), got)
    assert record["heading"] == navigation.plan(got.cost)["heading"]
    with pytest.raises(ValueError, match="needs .*probabilities or an .*cost map"):
        annotate(x[0].astype(np.uint8), video.Prediction(got.mask))


def test_a_video_frame_leaves_the_models_last_upsampling_to_the_finishing_step(model_path):
    """frame_scores gives the logits before the model's last layer (a 16x coarser map), and
    finish_frame, upsampling them as that layer does, gives what the whole model's logits give:
    the same average, mask and cost map, bit for bit. A model that cannot be cut is run whole."""
    model = inference.load_model(model_path)
    predictor = inference.Predictor(model)
    x = np.random.default_rng(4).uniform(0, 255, (1, HEIGHT, WIDTH, 3)).astype(np.float32)
    frame = predictor.frame_scores(x)
    assert frame.logits and frame.size == (HEIGHT, WIDTH)
    assert tuple(frame.scores.shape) == (1, HEIGHT // 16, WIDTH // 16, voc.NUM_CLASSES)
    whole = inference.FrameScores(tf.convert_to_tensor(np.asarray(model(x, training=False))), True)
    previous = tf.nn.softmax(tf.random.stateless_normal((1, HEIGHT, WIDTH, voc.NUM_CLASSES), (1, 2)))
    costs = navigation.class_costs_for(voc.CLASS_NAMES)
    for got, want in zip(predictor.finish_frame(frame, previous, 0.5, "safe", costs),
                         predictor.finish_frame(whole, previous, 0.5, "safe", costs)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    flipped = inference.Predictor(model, flip=True).frame_scores(x)  # two views: averaged probabilities
    assert not flipped.logits and flipped.size is None and tuple(flipped.scores.shape[1:3]) == (HEIGHT, WIDTH)


@pytest.mark.parametrize("planned", [True, False])
def test_a_frame_model_finishes_frames_on_the_writer_thread_in_order(model_path, clip, tmp_path, planned):
    """run_stream runs only the network on the caller's thread; the last upsampling and the
    softmax, smoothing and cost map, or the argmax alone for plain masks (FrameModel.finish),
    run on the writer's, in frame order, and give what one call gives."""
    predictor = inference.Predictor(inference.load_model(model_path))
    nav = video.NavigationSpec("safe", navigation.class_costs_for(voc.CLASS_NAMES)) if planned else None
    smooth = 0.5 if planned else 0.0
    seen = []

    class Recording(video.FrameModel):
        def model(self, x):
            seen.append(("model", threading.current_thread().name))
            return super().model(x)

        def finish(self, out):
            seen.append(("finish", threading.current_thread().name))
            return super().finish(out)

    video.run_stream(Recording(predictor, smooth, nav), clip, tmp_path / "split", ClassTable.voc(),
                     nav=nav)
    assert {name for step, name in seen if step == "model"} == {threading.main_thread().name}
    assert {name for step, name in seen if step == "finish"} == {"video-writer"}
    assert [step for step, _ in seen].count("finish") == FRAMES
    # The same frames through one call each (model and finish on this thread) give the same lines.
    whole = video.frame_model(predictor, smooth, nav)
    video.run_stream(lambda x: whole(x), clip, tmp_path / "whole", ClassTable.voc(), nav=nav)
    if not planned:  # and the model's own masks graph, run whole, gives them too
        video.run_stream(lambda x: video.Prediction(predictor.masks(x)[0]), clip, tmp_path / "masks",
                         ClassTable.voc())
        assert _lines(tmp_path / "split" / "drive.jsonl") == _lines(tmp_path / "masks" / "drive.jsonl")
    assert _lines(tmp_path / "split" / "drive.jsonl") == _lines(tmp_path / "whole" / "drive.jsonl")


def test_overlay_blends_classes_and_keeps_background_pixels():
    classes = ClassTable.voc()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (HEIGHT, WIDTH)).astype(np.uint8)
    out = overlay.blend(image, mask, classes, 0.3)
    expected = 0.7 * image + 0.3 * classes.palette()[mask].astype(np.float64)
    fg = mask > 0
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[~fg], image[~fg])
    assert np.abs(out[fg].astype(np.float64) - expected[fg]).max() <= 1.0
    np.testing.assert_array_equal(overlay.blend(image.astype(np.float32), mask, classes, 0.3), out)


@pytest.mark.skipif(not os.sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_writer_thread_yields_to_the_model_and_the_reader_does_not(clip, tmp_path, monkeypatch):
    import threading

    classes = ClassTable.voc()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = set()

    blend = overlay.blend

    def watched(frame, mask, table, alpha):  # runs on the writer thread
        seen.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return blend(frame, mask, table, alpha)

    monkeypatch.setattr(overlay, "blend", watched)
    video.run_stream(lambda x: video.Prediction(np.zeros(x.shape[1:3], np.uint8)), clip, tmp_path, classes,
                     max_frames=3)
    assert seen == {min(19, base + video.WRITER_NICE)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the model's thread is untouched


@pytest.mark.skipif(not os.sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_a_priority_that_cannot_be_lowered_warns_and_the_stream_still_runs(clip, tmp_path, monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(video.os, "setpriority", refuse)
    with pytest.warns(RuntimeWarning, match="video-writer"):
        result = video.run_stream(lambda x: video.Prediction(np.zeros(x.shape[1:3], np.uint8)), clip, tmp_path,
                                  ClassTable.voc(), max_frames=4)
    assert result["frames"] == 4


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "abc"])
def test_alpha_outside_zero_to_one_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.parse_args(["--model", "m.keras", "photo.jpg", "--alpha", value])
    assert exit_info.value.code == 2 and "--alpha" in capsys.readouterr().err
    assert predict.parse_args(["--model", "m.keras", "photo.jpg", "--alpha", "1"]).alpha == 1.0
