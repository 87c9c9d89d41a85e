"""Your own data set, your own classes: a CVAT export trained, evaluated, exported and predicted end to end."""
import json

import numpy as np
import pytest
from PIL import Image

from kit import data
import evaluate
import export
import predict
import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NAMES = ["background", "road", "obstacle", "person"]
TINY = ["--input-size", "64", "--resize-before-crop", "80", "--batch-size", "4", "--backbone", "mobilenetv2",
        "--backbone-weights", "none", "--aspp-filters", "16", "--bn-momentum", "0.9", "--lr", "1e-3", "--verbose", "0"]


@pytest.fixture(scope="module")
def cvat_run(tmp_path_factory):
    from conftest import build_cvat_export

    root = tmp_path_factory.mktemp("cvat") / "my_export"
    build_cvat_export(root, n=20, size=(72, 64), seed=1, shapes=True)
    run_dir = tmp_path_factory.mktemp("run")
    train.main(train.parse_args(["--data-dir", str(root), "--run-dir", str(run_dir), "--epochs", "2",
                                 "--steps-per-epoch", "2", *TINY]))
    return root, run_dir


def test_the_run_records_the_export_and_its_classes(cvat_run):
    root, run_dir = cvat_run
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data_root"] == str(root.resolve()) and saved["data_kind"] == "cvat"
    assert saved["classes"]["names"] == NAMES and saved["classes"]["colours"][1] == [128, 64, 128]
    # default.txt split by --val-fraction 0.2: 16 train, 4 held out (2 val, 2 test)
    assert (saved["num_train_images"], saved["num_val_images"], saved["num_test_images"]) == (16, 2, 2)
    assert saved["val_fraction"] == 0.2


def test_evaluate_reports_by_the_export_class_names(cvat_run, tmp_path):
    _, run_dir = cvat_run
    report = evaluate.main(evaluate.parse_args(["--run-dir", str(run_dir), "--out-dir", str(tmp_path),
                                                "--num-figures", "1"]))
    assert list(report["per_class_iou"]) == NAMES and np.asarray(report["confusion_matrix"]).shape == (4, 4)
    assert (tmp_path / "per_class_iou.md").read_text().count("| obstacle |") == 1
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "predictions.png").is_file()


def test_predict_writes_masks_in_the_labelmap_colours_from_keras_and_tflite(cvat_run, tmp_path):
    root, run_dir = cvat_run
    image = next((root / data.IMAGES_DIR).iterdir())
    predict.main(predict.parse_args(["--model", str(run_dir / "best.keras"), str(image), "--out", str(tmp_path / "k")]))
    export.main(export.parse_args(["--run-dir", str(run_dir), "--out-dir", str(tmp_path / "export"), "--size", "64",
                                   "--formats", "float32", "--parity-images", "2"]))
    assert json.loads((tmp_path / "export" / "classes.json").read_text())["names"] == NAMES
    predict.main(predict.parse_args(["--model", str(tmp_path / "export" / "model_float32.tflite"), str(image),
                                     "--out", str(tmp_path / "t")]))
    for out in ("k", "t"):
        with Image.open(tmp_path / out / f"{image.stem}_mask.png") as mask:
            palette = np.asarray(mask.getpalette()[:12]).reshape(4, 3)
            assert mask.mode == "P" and np.asarray(mask).max() < 4
            np.testing.assert_array_equal(palette, [[0, 0, 0], [128, 64, 128], [250, 170, 30], [220, 20, 60]])
            assert data.ClassTable.from_labelmap(root / data.LABELMAP).decode(mask).shape == mask.size[::-1]


def test_a_model_with_other_classes_is_refused_by_evaluate(cvat_run, tmp_path):
    _, run_dir = cvat_run
    saved = json.loads((run_dir / "config.json").read_text())
    saved["classes"] = data.ClassTable.voc().to_json()  # 21 classes, the model predicts 4
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(saved))
    with pytest.raises(Exception, match="predicts 4 classes but the data has 21"):
        evaluate.main(evaluate.parse_args(["--run-dir", str(other), "--model", str(run_dir / "best.keras")]))
