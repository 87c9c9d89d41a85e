"""The kit runs where TensorFlow runs without oneDNN (AVX2-only x86, ARM, TF_ENABLE_ONEDNN_OPTS=0).

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it loads, so the oneDNN-off side runs in a
subprocess: a ResNet-50 training step (conv5 and ASPP dilated), evaluation, a SavedModel export
and a save/load round trip. The model file it writes then loads here, where the suite runs
with oneDNN on x86, and predicts the same.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import download_data
from kit import inference, kernels

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
import keras, evaluate, export, train
from kit import kernels
run_dir, data_dir, out = {run_dir!r}, {data_dir!r}, {out!r}
train.main(train.parse_args(["--dataset", "synthetic", "--data-dir", data_dir, "--run-dir", run_dir,
    "--num-train", "12", "--num-val", "8", "--input-size", "64", "--resize-before-crop", "80", "--batch-size", "4",
    "--backbone", "resnet50", "--backbone-weights", "none", "--aspp-filters", "16", "--epochs", "1",
    "--steps-per-epoch", "2", "--verbose", "0"]))
report = evaluate.main(evaluate.parse_args(["--run-dir", run_dir, "--out-dir", out + "/eval", "--num-figures", "1"]))
parity = export.main(export.parse_args(["--run-dir", run_dir, "--out-dir", out + "/export", "--size", "64",
    "--parity-images", "2", "--formats", "savedmodel"]))
loaded = keras.models.load_model(run_dir + "/best.keras", safe_mode=True)
x = np.random.default_rng(0).uniform(0, 255, (1, 64, 80, 3)).astype("float32")
np.save(out + "/logits.npy", np.asarray(loaded(x, training=False)))
print(json.dumps({{"onednn": kernels.onednn_enabled(), "kernel": kernels.dilated_conv_kernel(),
                  "mean_iou": report["mean_iou"], "savedmodel_agreement": parity["argmax_agreement"]["savedmodel"]}}))
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    download_data.ensure_synthetic(d, 12, 8, progress=False, min_size=64, max_size=128)
    return d


def test_train_evaluate_export_without_onednn_and_the_model_loads_here(data_dir, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    code = CHILD.format(root=str(ROOT), run_dir=str(run_dir), data_dir=str(data_dir), out=str(out))
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop(kernels.DILATED_CONV_ENV, None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["onednn"] is False and result["kernel"] == "taps"
    assert "dilated convs taps" in done.stdout
    assert 0.0 <= result["mean_iou"] <= 1.0 and result["savedmodel_agreement"] >= 0.999
    assert (out / "export" / "saved_model" / "saved_model.pb").is_file()
    # The same file, loaded where the suite runs (oneDNN on x86; inference runs the native forward pass).
    loaded = inference.load_model(run_dir / "best.keras")  # safe_mode, as predict.py loads it
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 80, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.load(out / "logits.npy"),
                               rtol=1e-3, atol=1e-3)
