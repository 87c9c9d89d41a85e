"""The vehicle's path: ONNX export (export.py, kit/deploy.py) and predict.py on .tflite and .onnx
files without TensorFlow (kit/onboard.py), checked against the TensorFlow path on the same files.

One tiny run (64 px, MobileNetV2 without pretrained weights, a few steps) is exported once, to
model_float32.tflite and model.onnx, for the module. "Without TensorFlow" is tested as the car
has it: predict.py runs in a subprocess where importing tensorflow or keras fails.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import read_video, tiny_argv
from kit import cli
from kit import deploy
from kit import inference
from kit import onboard
from kit import video
import download_data
import export
import predict
import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
# Its sitecustomize makes importing tensorflow or keras fail, as if they were not installed.
NO_TENSORFLOW = ROOT / "tests" / "no_tensorflow"
CLIP_FRAMES, CLIP_W, CLIP_H = 8, 80, 48


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run trained for 20 steps (a fast batch-norm momentum, so that it predicts more than
    one class) and exported to float32 TFLite and ONNX at 64 px, with the parity gate."""
    data_dir = tmp_path_factory.mktemp("data")
    download_data.ensure_synthetic(data_dir, 12, 8, progress=False, min_size=64, max_size=128)
    run_dir = tmp_path_factory.mktemp("run")
    train.main(train.parse_args(tiny_argv(data_dir, run_dir, "--epochs", "1", "--steps-per-epoch", "20",
                                          "--bn-momentum", "0.5", "--lr", "3e-3")))
    out = tmp_path_factory.mktemp("export")
    parity = export.main(export.parse_args(["--run-dir", str(run_dir), "--out-dir", str(out), "--size", str(SIZE),
                                            "--formats", "float32,onnx", "--parity-images", "4"]))
    return run_dir, out, parity


@pytest.fixture(scope="module")
def blocker() -> Path:
    return NO_TENSORFLOW


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Images at the model's size and at two others, and an 8-frame mp4v clip (80x48)."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(5)
    images = folder / "images"
    images.mkdir()
    for name, (w, h) in {"square": (SIZE, SIZE), "wide": (90, 70), "tall": (40, 100)}.items():
        base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
        picture = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        picture[h // 4:h // 2, w // 3:2 * w // 3] = (200, 40, 40)
        Image.fromarray(picture).save(images / f"{name}.png")
    clip = folder / "drive.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (CLIP_W, CLIP_H))
    for i in range(CLIP_FRAMES):
        frame = np.tile(np.linspace(0, 255, CLIP_W, dtype=np.uint8)[None, :, None], (CLIP_H, 1, 3))
        frame[8:30, 6 * i:6 * i + 24] = (40, 200, 90)
        writer.write(frame)
    writer.release()
    return images, clip


def _no_tensorflow(blocker: Path, *argv) -> subprocess.CompletedProcess:
    """predict.py with `argv` in a fresh Python where tensorflow and keras cannot be imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "predict.py", *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.asarray(im)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- export


def test_onnx_export_passes_the_parity_gate_with_any_batch(exported):
    run_dir, out, parity = exported
    assert parity["argmax_agreement"]["onnx"] >= deploy.PARITY_FLOOR
    assert parity["onnx_opset"] == deploy.ONNX_OPSET == 17
    assert (out / "classes.json").is_file() and parity["files"]["onnx"] == str(out / "model.onnx")
    facts = deploy.onnx_facts(out / "model.onnx")
    assert facts["opset"] == 17 and facts["input"]["shape"] == [None, SIZE, SIZE, 3]
    assert facts["producer"].startswith("tf2onnx")
    # Any batch: two images at once give what each gives alone, and what Keras gives.
    model = onboard.load_model(out / "model.onnx")
    assert "CPUExecutionProvider" in model.session.get_providers()
    assert "AzureExecutionProvider" not in model.session.get_providers()  # a remote-call provider, no local ops
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    both = model(x)
    assert both.shape == (2, SIZE, SIZE, 21)
    np.testing.assert_allclose(both[1], model(x[1:])[0], rtol=0, atol=1e-4)
    keras_logits = inference.load_model(run_dir / "best.keras")(x, training=False).numpy()
    assert (both.argmax(-1) == keras_logits.argmax(-1)).mean() >= 0.999
    assert len(np.unique(keras_logits.argmax(-1))) >= 2, "a model predicting one class agrees trivially"


def test_report_gives_the_onnx_row_and_its_opset(exported, tmp_path):
    run_dir, _, _ = exported
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deploy, "THREADS", {"1": 1, "2": 1, "all": 1})  # Keras timed in one subprocess
        result = export.main(export.parse_args(["--run-dir", str(run_dir), "--out-dir", str(tmp_path), "--report",
                                                "--formats", "onnx", "--size", str(SIZE), "--latency-runs", "2",
                                                "--warmup-runs", "1", "--no-progress"]))
    row = json.loads((tmp_path / "export_report.json").read_text())["formats"]["onnx"]
    assert row["agreement"] >= deploy.PARITY_FLOOR and 0 <= row["mean_iou"] <= 1
    assert set(row["latency_ms"]) == {"1", "2", "all"} and all(v > 0 for v in row["latency_ms"].values())
    assert row["size_mb"] == pytest.approx(deploy.size_mb(tmp_path / "model.onnx"), abs=1e-3)
    assert result["onnx"]["opset"] == 17 and result["machine"]["onnxruntime"]
    table = (tmp_path / "export_report.md").read_text()
    assert "| onnx |" in table and "opset 17" in table and "ONNX Runtime" in table


def test_onnx_without_the_converter_says_what_to_install(exported, tmp_path, monkeypatch, capsys):
    run_dir, _, _ = exported
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed: importing it fails
    with pytest.raises(SystemExit) as exit_info:
        cli.run(export.main, export.parse_args, ["--run-dir", str(run_dir), "--out-dir", str(tmp_path / "e"),
                                                 "--formats", "onnx", "--size", str(SIZE)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --formats onnx needs the ONNX converter") and "pip install tf2onnx==" in err
    assert not (tmp_path / "e").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- without TensorFlow


def test_the_blocker_blocks(blocker):
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    for module in ("tensorflow", "keras"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert done.returncode != 0 and "blocked" in done.stderr


@pytest.mark.parametrize("name", ["model_float32.tflite", "model.onnx"])
def test_images_without_tensorflow_give_the_tensorflow_paths_masks(exported, blocker, inputs, tmp_path, name):
    _, out, _ = exported
    images, _ = inputs
    done = _no_tensorflow(blocker, "--model", out / name, images, "--out", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # The TensorFlow path on the same file: inference.Predictor's graph kernels, as evaluate.py runs it.
    predictor = inference.Predictor(inference.load_model(out / name))
    seen = set()
    for path in sorted(images.iterdir()):
        image = inference.read_image(path)
        expected = predictor.masks(image[None])[0]
        np.testing.assert_array_equal(_mask(tmp_path / f"{path.stem}_mask.png"), expected, err_msg=path.name)
        seen |= set(np.unique(expected).tolist())
    assert len(seen) >= 2, "masks of one class would agree trivially"


@pytest.mark.parametrize("name", ["model_float32.tflite", "model.onnx"])
def test_video_with_navigation_without_tensorflow_matches_the_tensorflow_path(exported, blocker, inputs, tmp_path,
                                                                              name):
    _, out, _ = exported
    _, clip = inputs
    flags = ["--every", "2", "--smooth", "0.5", "--navigation", "safe"]
    done = _no_tensorflow(blocker, "--model", out / name, "--video", clip, "--out", tmp_path / "car", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    car = _lines(tmp_path / "car" / "drive.jsonl")
    # The same stream through the TensorFlow path: inference.Predictor in video.frame_model.
    model = inference.load_model(out / name)
    classes = inference.classes_for_model(out / name, model)
    nav = video.NavigationSpec("safe", predict.navigation.class_costs_for(classes.names, {}))
    video.run_stream(video.frame_model(inference.Predictor(model), 0.5, nav), clip, tmp_path / "tf", classes,
                     every=2, nav=nav)
    reference = _lines(tmp_path / "tf" / "drive.jsonl")
    assert len(car) == len(reference) == CLIP_FRAMES
    assert [r["predicted"] for r in car] == [i % 2 == 0 for i in range(CLIP_FRAMES)]
    for mine, theirs in zip(car, reference):
        assert mine["class_fractions"] == theirs["class_fractions"]  # from the masks: equal masks, equal counts
        assert (mine["heading"], mine["stop"]) == (theirs["heading"], theirs["stop"])
        # Probabilities agree to float32 rounding of the softmax (the last of six decimals may differ).
        assert mine["sector_costs"] == pytest.approx(theirs["sector_costs"], abs=2e-6)
    assert len({k for r in car for k, v in r["class_fractions"].items() if v}) >= 2
    assert len(read_video(tmp_path / "car" / "drive_overlay.mp4")[0]) == CLIP_FRAMES


def test_navigation_on_images_without_tensorflow(exported, blocker, inputs, tmp_path):
    _, out, _ = exported
    images, _ = inputs
    done = _no_tensorflow(blocker, "--model", out / "model.onnx", images / "wide.png", "--navigation", "safe",
                          "--out", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = _lines(tmp_path / predict.NAVIGATION_LOG)
    assert 0 <= record["heading"] < 5 and (tmp_path / "wide_navigation.png").is_file()


def test_a_bad_model_ends_in_one_error_line_without_tensorflow(blocker, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(2048))
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    done = _no_tensorflow(blocker, "--model", junk, image, "--out", tmp_path / "p")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {junk} cannot be loaded as a model")


def _pins(name: str) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines())
    return dict(line.split("==") for line in lines if line)


def test_the_car_installs_no_tensorflow_and_requirements_txt_versions():
    car, full = _pins("requirements-car.txt"), _pins("requirements.txt")
    assert {"ai-edge-litert", "onnxruntime", "numpy", "pillow", "opencv-python-headless"} <= set(car)
    assert not {"tensorflow", "keras", "tf2onnx"} & set(car)
    assert {name: full.get(name) for name in car} == car


# ----------------------------------------------------------------------------- bad input, in this process


def _predict_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.run(predict.main, predict.parse_args, ["--model", *map(str, argv)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def _copy(src: Path, folder: Path, with_classes: dict | None = None) -> Path:
    folder.mkdir()
    (folder / src.name).write_bytes(src.read_bytes())
    if with_classes is not None:
        (folder / onboard.CLASSES_FILE).write_text(json.dumps(with_classes))
    return folder / src.name


@pytest.mark.parametrize("name", ["model_float32.tflite", "model.onnx"])
def test_missing_or_mismatched_classes_json_is_an_error_naming_the_file(exported, inputs, tmp_path, capsys, name):
    _, out, _ = exported
    image = next(inputs[0].iterdir())
    alone = _copy(out / name, tmp_path / "alone")
    err = _predict_error(capsys, alone, image, "--out", tmp_path / "p")
    assert str(alone) in err and "classes.json" in err and "--labelmap" in err
    three = {"names": ["background", "road", "car"], "colours": [[0, 0, 0], [128, 64, 128], [0, 0, 142]]}
    other = _copy(out / name, tmp_path / "other", three)
    err = _predict_error(capsys, other, image, "--out", tmp_path / "p")
    assert str(other) in err and "predicts 21 classes but the data has 3" in err
    broken = _copy(out / name, tmp_path / "broken", {"colours": []})
    err = _predict_error(capsys, broken, image, "--out", tmp_path / "p")
    assert str(broken.parent / "classes.json") in err and "not a class table" in err


def test_models_that_do_not_take_images_are_refused(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    # (1, 3, 64, 64): channels first, as a PyTorch export would be.
    nchw = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "nchw",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])])
    path = tmp_path / "nchw" / "model.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(nchw, opset_imports=[helper.make_opsetid("", 17)]), path)
    photos = tmp_path / "photos"  # an image to segment: an input without one is refused first
    photos.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(photos / "x.png")
    err = _predict_error(capsys, path, photos, "--out", tmp_path / "p")
    assert str(path) in err and "(1, 3, 64, 64), not (N, H, W, 3)" in err and "export.py" in err
    # A TFLite model of one-channel (1, 8, 8, 1) input.
    fn = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec((1, 8, 8, 1), tf.float32)])
    flat = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn).convert()
    gray = tmp_path / "gray.tflite"
    gray.write_bytes(flat)
    err = _predict_error(capsys, gray, photos, "--out", tmp_path / "p")
    assert str(gray) in err and "(1, 8, 8, 1), not (N, H, W, 3)" in err


def test_a_missing_runtime_names_the_package(exported, inputs, monkeypatch, tmp_path, capsys):
    _, out, _ = exported
    for name, module, package in (("model.onnx", "onnxruntime", "onnxruntime"),
                                  ("model_float32.tflite", "ai_edge_litert.interpreter", "ai-edge-litert")):
        monkeypatch.setitem(sys.modules, module, None)
        err = _predict_error(capsys, out / name, next(inputs[0].iterdir()), "--out", tmp_path)
        assert f"needs the {package} package" in err and "requirements-car.txt" in err


# ----------------------------------------------------------------------------- NumPy kernels


@pytest.mark.parametrize("shape,size", [((1, 64, 64, 21), (48, 80)), ((2, 37, 53, 3), (64, 64)),
                                        ((1, 100, 17, 5), (33, 250)), ((1, 9, 9, 2), (9, 9))])
def test_numpy_resize_gives_tensorflows_bits(shape, size):
    x = np.random.default_rng(1).normal(0, 10, shape).astype(np.float32)
    np.testing.assert_array_equal(onboard.resize_bilinear(x, size), tf.image.resize(x, size).numpy())


class _Stripes:
    """A fixed-size (1, 24, 24, 3) stand-in model whose logits depend on position and colour."""

    traceable = False
    input_shape, output_shape = (1, 24, 24, 3), (1, 24, 24, 4)

    def __call__(self, x, training=False):
        x = np.asarray(x, np.float32)
        ramp = np.linspace(-3, 3, 24, dtype=np.float32)
        channels = [x[..., 0] / 60, x[..., 1] / 60 + ramp[None, None, :], x[..., 2] / 60 + ramp[None, :, None],
                    np.full(x.shape[:3], 1.5, np.float32)]
        return np.stack(channels, -1)


@pytest.mark.parametrize("options", [{}, {"flip": True, "scales": (0.75, 1.0, 1.5)},
                                     {"mode": "slide", "crop_size": 32, "stride": 20}])
def test_numpy_predictor_matches_the_tensorflow_predictor(options):
    images = np.random.default_rng(2).uniform(0, 255, (1, 50, 70, 3)).astype(np.float32)
    mine, theirs = onboard.Predictor(_Stripes(), **options), inference.Predictor(_Stripes(), **options)
    masks = mine.masks(images)
    np.testing.assert_array_equal(masks, theirs.masks(images))
    assert len(np.unique(masks)) >= 3
    np.testing.assert_allclose(mine.probabilities(images), theirs.probabilities(images).numpy(), rtol=0, atol=1e-6)
    average, mask = mine.smoothed(images, mine.smoothed(images[:, ::-1])[0], 0.6)
    ref_average, ref_mask = theirs.smoothed(images, theirs.smoothed(images[:, ::-1])[0], 0.6)
    np.testing.assert_allclose(average, ref_average.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask, ref_mask.numpy())
