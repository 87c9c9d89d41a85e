"""train.py, evaluate.py and predict.py end to end on tiny synthetic data (64 px, no pretrained weights)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kit import compare
from kit import config
from kit import data
import evaluate
import predict
import train
from kit import training
from kit import voc
from kit.data import ClassTable

VOC = ClassTable.voc()

from conftest import tiny_argv  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    result = train.main(train.parse_args(tiny_argv(data_dir, run_dir, "--epochs", "2", "--steps-per-epoch", "3")))
    return run_dir, result


def test_train_writes_config_log_and_checkpoints(trained):
    run_dir, result = trained
    config = json.loads((run_dir / "config.json").read_text())
    assert config["input_size"] == 64 and config["backbone"] == "mobilenetv2" and config["epochs"] == 2
    log = (run_dir / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    assert len(log) == 3 and header[0] == "epoch"
    for column in ("loss", "mean_iou", "val_loss", "val_pixel_accuracy", "val_mean_accuracy", "val_mean_iou",
                   "learning_rate"):
        assert column in header
    assert (run_dir / "best.keras").is_file() and (run_dir / "state" / "last.keras").is_file()
    assert any((run_dir / "tensorboard").rglob("*tfevents*"))
    state = json.loads((run_dir / "state" / "state.json").read_text())
    assert state["epoch"] == 1 and state["best"] == max(r["val_mean_iou"] for r in result["history"])
    assert not list(run_dir.rglob(".tmp-*"))
    best = keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    assert tuple(best(np.zeros((1, 70, 50, 3), "float32")).shape) == (1, 70, 50, voc.NUM_CLASSES)


def test_finished_run_is_not_trained_again(trained, data_dir, capsys):
    run_dir, _ = trained
    result = train.main(train.parse_args(tiny_argv(data_dir, run_dir, "--epochs", "2", "--steps-per-epoch", "3")))
    assert "already finished" in capsys.readouterr().out and result["initial_epoch"] == 2


def test_changed_settings_refuse_to_resume(trained, data_dir):
    run_dir, _ = trained
    with pytest.raises(config.ConfigError, match="input_size"):
        train.main(train.parse_args(tiny_argv(data_dir, run_dir, "--epochs", "3", "--input-size", "72")))


def test_demo_defaults_and_explicit_flags():
    config = train.resolve_config(train.parse_args(["--demo", "--epochs", "3"]))
    assert config["dataset"] == "synthetic" and config["backbone"] == "mobilenetv2" and config["epochs"] == 3
    full = train.resolve_config(train.parse_args([]))
    assert (full["dataset"], full["input_size"], full["resize_before_crop"], full["epochs"], full["lr"],
            full["backbone_weights"], full["loss"]) == ("voc", 384, 444, 25, 1e-4, "imagenet", "ce_dice")


def test_xla_flag_reaches_the_compiled_model(data_dir, tmp_path):
    config = train.resolve_config(train.parse_args(tiny_argv(data_dir, tmp_path, "--xla")))
    assert train.build_model(config, voc.NUM_CLASSES)[0].jit_compile is True
    assert train.build_model({**config, "xla": False}, voc.NUM_CLASSES)[0].jit_compile is False


def test_predict_writes_masks_the_size_of_each_input(trained, tmp_path):
    run_dir, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (53, 41), (200, 10, 10)).save(inputs / "a.jpg")
    Image.new("L", (30, 65), 90).save(inputs / "gray.png")
    (inputs / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="broken.jpg"):
        predict.main(predict.parse_args(["--model", str(run_dir / "best.keras"), str(inputs), "--out", str(out)]))
    for stem, size in (("a", (53, 41)), ("gray", (30, 65))):
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.mode == "P" and mask.size == size
        assert Image.open(out / f"{stem}_overlay.jpg").size == size
    assert not (out / "broken_mask.png").exists()


def test_evaluate_agrees_with_numpy_on_predict_masks(trained, data_dir, tmp_path):
    run_dir, _ = trained
    report = evaluate.main(evaluate.parse_args(["--run-dir", str(run_dir), "--out-dir", str(tmp_path / "ev"),
                                                "--num-figures", "2"]))
    ev = tmp_path / "ev"
    saved = json.loads((ev / "metrics.json").read_text())
    for name in ("metrics.json", "per_class_iou.md", "confusion_matrix.png", "predictions.png", "training_curves.png"):
        assert (ev / name).is_file(), name
    assert saved["num_images"] == 4 and set(saved["per_class_iou"]) == set(voc.CLASS_NAMES)
    # Recompute from predict.py's masks of the test images, at their own resolution.
    tree = data.tree_from_config(json.loads((run_dir / "config.json").read_text()))
    pairs = tree.pairs("test")
    predict.main(predict.parse_args(["--model", str(run_dir / "best.keras"), "--out", str(tmp_path / "pm"),
                                     *[jpg for jpg, _ in pairs]]))

    def mask(path):
        with Image.open(path) as im:
            return VOC.decode(im, path)

    cm = np.zeros((voc.NUM_CLASSES,) * 2, np.int64)
    for _, png in pairs:  # counted in NumPy here, independently of metrics.py
        labels, predicted = mask(png).ravel(), mask(tmp_path / "pm" / Path(png).name.replace(".png", "_mask.png")).ravel()
        valid = labels < voc.NUM_CLASSES
        np.add.at(cm, (labels[valid], predicted[valid]), 1)
    np.testing.assert_array_equal(np.asarray(saved["confusion_matrix"]), cm)
    valid = cm.sum(1) > 0
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert saved["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert saved["mean_accuracy"] == pytest.approx(np.mean(np.diag(cm)[valid] / cm.sum(1)[valid]))
    assert saved["mean_iou"] == pytest.approx(np.mean(np.diag(cm)[union > 0] / union[union > 0]))
    assert report["mean_iou"] == saved["mean_iou"]


def test_evaluate_input_resolution_with_tta(trained, tmp_path):
    run_dir, _ = trained
    report = evaluate.main(evaluate.parse_args(["--run-dir", str(run_dir), "--out-dir", str(tmp_path),
                                                "--resolution", "input", "--tta", "flip", "--scales", "0.75,1"]))
    assert report["resolution"] == "input" and report["num_images"] == 4 and 0 <= report["mean_iou"] <= 1


def test_compare_reads_what_train_and_evaluate_wrote(trained, tmp_path):
    """compare.py on the config.json and log.csv train.py wrote and the metrics.json evaluate.py wrote."""
    run_dir, result = trained
    runs = []
    for name, tta in (("plain", "none"), ("flipped", "flip")):
        copy = tmp_path / name  # the run's files, scored twice into copies of it
        copy.mkdir()
        for file in (config.RUN_CONFIG, config.RUN_LOG):
            (copy / file).write_bytes((run_dir / file).read_bytes())
        evaluate.main(evaluate.parse_args(["--run-dir", str(run_dir), "--out-dir", str(copy), "--tta", tta,
                                           "--num-figures", "1", "--navigation", "none"]))
        runs.append(copy)
    compared = compare.compare(runs, tmp_path / "cmp")
    table = compared.table
    settings = table.xs(compare.SETTINGS, level="section")
    assert list(settings.index) == ["evaluate tta"] and settings.loc["evaluate tta"].tolist() == ["none", "flip"]
    best = max(result["history"], key=lambda row: row["val_mean_iou"])
    assert table.loc[(compare.TRAINING, compare.BEST_EPOCH)].tolist() == [best["epoch"]] * 2
    assert table.loc[(compare.TRAINING, "best val_mean_iou")].tolist() == [pytest.approx(best["val_mean_iou"])] * 2
    for copy, column in zip(runs, ("plain", "flipped")):
        saved = json.loads((copy / config.RUN_METRICS).read_text())
        assert table.loc[(compare.SCORES, "mean_iou"), column] == saved["mean_iou"]
        assert table.xs(compare.PER_CLASS, level="section")[column].tolist() == list(saved["per_class_iou"].values())
    assert list(table.xs(compare.PER_CLASS, level="section").index) == list(voc.CLASS_NAMES)
    assert all(path.is_file() for path in compared.files)


def test_nan_loss_stops_with_error_and_keeps_last_good_state(data_dir, tmp_path, monkeypatch):
    # Divergence injected at the start of the second epoch: the classifier's kernel becomes
    # NaN, so the logits and the loss do. (NaN images would not do: in a traced graph,
    # oneDNN's fused conv + batch norm + ReLU turns NaN activations into zeros.)
    real = training.RunState.on_epoch_begin

    def poisoned(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch == 1:
            kernel = self.model.get_layer("classifier").kernel
            kernel.assign(tf.fill(kernel.shape, float("nan")))

    monkeypatch.setattr(training.RunState, "on_epoch_begin", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main(train.parse_args(tiny_argv(data_dir, run_dir, "--epochs", "3", "--steps-per-epoch", "2")))
    assert exit_info.value.code not in (0, None) and "diverged: loss nan" in str(exit_info.value.code)
    state = json.loads((run_dir / "state" / "state.json").read_text())
    assert state["epoch"] == 0 and len(state["history"]) == 1
    model = keras.models.load_model(run_dir / "state" / "last.keras", safe_mode=True)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def test_killed_run_resumes_without_repeating_an_epoch(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "train.py", *tiny_argv(data_dir, run_dir, "--epochs", "3", "--steps-per-epoch", "12")]
    state_path = run_dir / "state" / "state.json"
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not state_path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads(state_path.read_text())
    assert first["epoch"] == 0, "the run was not killed during its second epoch; lengthen the epochs"
    second = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout and "after epoch 1" in second.stdout
    state = json.loads(state_path.read_text())
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3]
    assert state["history"][0] == first["history"][0]  # the first epoch was not run again
    rows = (run_dir / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_mirrored_strategy_over_two_logical_cpus(data_dir, tmp_path):
    code = f"""
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {str(ROOT)!r})
import train
argv = {tiny_argv(data_dir, tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "2", "--strategy", "mirrored")!r}
result = train.main(train.parse_args(argv))
print("history", len(result["history"]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MirroredStrategy over 2 replica(s)" in done.stdout and "history 1" in done.stdout


def test_export_tflite_and_savedmodel_match_keras_and_predict_reads_tflite(trained, data_dir, tmp_path):
    import export

    run_dir, _ = trained
    out = tmp_path / "export"
    report = export.main(export.parse_args(["--run-dir", str(run_dir), "--out-dir", str(out), "--size", "64",
                                            "--parity-images", "3", "--formats", "savedmodel,float16"]))
    assert (out / "model_float16.tflite").is_file()  # float32 TFLite: tests/test_own_data.py
    assert report["argmax_agreement"]["float16"] >= 0.999 and report["argmax_agreement"]["savedmodel"] >= 0.999
    image = tmp_path / "x.jpg"
    Image.new("RGB", (90, 70), (20, 200, 20)).save(image)
    predict.main(predict.parse_args(["--model", str(out / "model_float16.tflite"), str(image),
                                     "--out", str(tmp_path / "p")]))
    assert Image.open(tmp_path / "p" / "x_mask.png").size == (90, 70)
