"""Faults a hostile pass found: lost files, silent wrong labels and splits, tracebacks.

Each test here failed before its fix. Models are trained once for the module (TINY_RUN, one
epoch, poly schedule) on a private copy of the synthetic tree, so its lists can be changed.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import download_data
import evaluate
import predict
import train
from conftest import build_cvat_export, tiny_argv
from kit import cli, config, data, deploy, inference, navigation, voc


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- files lost ----------------------------------------------------------------------------------

def test_synthetic_never_replaces_a_folder_it_did_not_write(tmp_path):
    own = tmp_path / "synthetic" / "notes.txt"
    own.parent.mkdir()
    own.write_text("mine")
    argv = ["--synthetic", "--data-dir", str(tmp_path), "--num-train", "3", "--num-val", "2", "--no-progress"]
    with pytest.raises(data.DataError, match=r"synthetic.*not written by"):
        download_data.main(download_data.parse_args(argv))
    assert own.read_text() == "mine" and sorted(p.name for p in own.parent.iterdir()) == ["notes.txt"]


def test_synthetic_keeps_files_a_user_added_beside_its_tree(tmp_path):
    argv = ["--synthetic", "--data-dir", str(tmp_path), "--num-train", "3", "--num-val", "2", "--no-progress"]
    download_data.main(download_data.parse_args(argv))
    kept = tmp_path / "synthetic" / "my_labels.csv"
    kept.write_text("keep me")
    with pytest.raises(data.DataError, match="my_labels.csv"):  # another recipe would regenerate the tree
        download_data.main(download_data.parse_args([*argv[:3], "--num-train", "4", "--num-val", "2"]))
    assert kept.read_text() == "keep me"
    download_data.main(download_data.parse_args(argv))  # the same recipe reuses the tree, touching nothing


def _photos(folder: Path, names=("x.jpg",), size=(40, 32)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(folder / name)


def test_predict_refuses_to_write_into_an_input_folder(tmp_path):
    photos = tmp_path / "photos"
    _photos(photos, ("x.jpg", "x_mask.png"))
    before = _snapshot(photos)
    with pytest.raises(data.DataError, match="also an input folder"):
        predict.main(predict.parse_args(["--model", str(tmp_path / "absent.keras"), str(photos),
                                         "--out", str(photos)]))
    assert _snapshot(photos) == before


def test_predict_refuses_an_output_that_is_an_input_file(tmp_path):
    photos = tmp_path / "photos"
    _photos(photos, ("x.jpg", "x_mask.png"))
    before = _snapshot(photos)
    with pytest.raises(data.DataError, match="x_mask.png.*overwritten"):
        predict.main(predict.parse_args(["--model", str(tmp_path / "absent.keras"), str(photos / "x.jpg"),
                                         str(photos / "x_mask.png"), "--out", str(photos)]))
    assert _snapshot(photos) == before


def test_output_names_are_distinct_ignoring_case(tmp_path):
    _photos(tmp_path / "a", ("x.jpg",))
    _photos(tmp_path, ("a_x.jpg",))
    _photos(tmp_path / "c", ("y.jpg", "y.JPG"))  # two files on a case-sensitive file system
    files = [tmp_path / "a" / "x.jpg", tmp_path / "a_x.jpg", tmp_path / "c" / "y.jpg", tmp_path / "c" / "y.JPG"]
    names = predict.output_names(files)
    assert len({n.casefold() for n in names}) == len(files), names
    assert names[0] in ("a_x", "x") and names[1].startswith("a_x")


def test_predict_out_on_a_file_is_a_clear_error(tmp_path):
    _photos(tmp_path / "photos")
    (tmp_path / "out").write_text("a file")
    with pytest.raises(data.DataError, match="is a file, not a folder"):
        predict.main(predict.parse_args(["--model", "m.keras", str(tmp_path / "photos"), "--out",
                                         str(tmp_path / "out")]))


# --- silent wrong results ------------------------------------------------------------------------

def test_a_white_class_is_not_read_as_ignore():
    table = data.ClassTable(("background", "obstacle"), ((0, 0, 0), (255, 255, 255)))
    grey = np.array([[0, 255], [255, 0]], np.uint8)  # a binary mask saved as 0/255 grayscale
    np.testing.assert_array_equal(table.decode(Image.fromarray(grey, "L")), [[0, 1], [1, 0]])
    # Without a white class, 255 in a grayscale mask is still the ignore label.
    np.testing.assert_array_equal(data.ClassTable.voc().decode(Image.fromarray(grey, "L")), grey)


def test_a_class_without_training_pixels_is_a_warning(capsys):
    train.warn_empty_classes(np.array([10, 0, 5, 0]), ("background", "obstacle", "road", "person"))
    out = capsys.readouterr().out
    assert "warning: 2 class(es)" in out and "obstacle, person" in out


def test_ids_keep_their_spaces_and_lose_a_byte_order_mark(tmp_path):
    listing = tmp_path / "default.txt"
    listing.write_bytes("\ufeffframe_000\nframe_000 copy\n  frame_001  \n\nframe_000\n".encode("utf-8"))
    assert data.read_ids(listing) == ["frame_000", "frame_000 copy", "frame_001"]


def test_a_labelmap_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "labelmap.txt"
    path.write_bytes("\ufeffbackground:0,0,0::\nroad:128,64,128::\n".encode("utf-8"))
    assert data.ClassTable.from_labelmap(path).names == ("background", "road")


def _lists(root: Path, **lists) -> Path:
    splits = root / data.SPLITS_DIR
    splits.mkdir(parents=True)
    for name, ids in lists.items():
        (splits / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return splits


def test_a_test_list_is_used_as_the_test_split(tmp_path):
    ids = [f"im{k:02d}" for k in range(20)]
    splits = data.splits_of(_lists(tmp_path, train=ids[:12], val=ids[12:16], test=ids[16:]))
    assert (splits.train, splits.val, splits.test, splits.full_val) == (ids[:12], ids[12:16], ids[16:], ids[12:16])
    assert splits.origin["test"] == "test.txt" and splits.origin["val"] == "val.txt"


def test_train_and_trainval_lists_give_validation_as_their_difference(tmp_path):
    ids = [f"im{k:02d}" for k in range(10)]
    splits = data.splits_of(_lists(tmp_path, train=ids[:6], trainval=ids))
    assert splits.train == ids[:6] and sorted(splits.full_val) == ids[6:]
    assert splits.origin["full-val"] == "trainval.txt less train.txt"


def test_lists_without_val_hold_validation_out_of_train(tmp_path):
    ids = [f"im{k:02d}" for k in range(20)]
    splits = data.splits_of(_lists(tmp_path, train=ids[:15], test=ids[15:]), val_fraction=0.2)
    assert len(splits.full_val) == 3 and not set(splits.full_val) & set(splits.train)
    assert sorted(splits.train + splits.full_val) == ids[:15] and splits.test == ids[15:]
    assert "held out from train.txt (20%)" in splits.origin["val"]


def _exif_photo(path: Path, width: int = 40, height: int = 24) -> np.ndarray:
    """A JPEG stored landscape with EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = 255  # left half white as stored: the top half once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return pixels


def test_exif_orientation_is_applied_when_decoding(tmp_path):
    import pipeline

    _exif_photo(tmp_path / "phone.jpg")
    upright = data.read_rgb(tmp_path / "phone.jpg")
    assert upright.shape == (40, 24, 3) and upright[:5].mean() > 200 and upright[-5:].mean() < 50
    assert inference.read_image(tmp_path / "phone.jpg").shape == (40, 24, 3)
    data.ClassTable.voc().save_mask(np.zeros((40, 24), np.uint8), tmp_path / "upright.png")
    image, mask = pipeline.load_example(str(tmp_path / "phone.jpg"), str(tmp_path / "upright.png"))
    assert image.shape[:2] == mask.shape == (40, 24)
    data.ClassTable.voc().save_mask(np.zeros((24, 40), np.uint8), tmp_path / "sideways.png")
    with pytest.raises(data.DataError, match="EXIF orientation"):
        pipeline.load_example(str(tmp_path / "phone.jpg"), str(tmp_path / "sideways.png"))


def test_background_is_not_free_when_the_data_names_its_ground():
    costs = navigation.class_costs_for(["background", "road", "wall"])
    assert costs[0] == navigation.UNKNOWN_COST and costs[1] == 0.0 and costs[2] == 1.0
    assert navigation.class_costs_for(voc.CLASS_NAMES)[0] == 0.0  # VOC: background is the only ground
    assert navigation.class_costs_for(["background", "road"], {"background": 0.2})[0] == pytest.approx(0.2)


def test_cvat_ids_in_subfolders_are_found(tmp_path):
    build_cvat_export(tmp_path, n=4)
    for sub in (data.IMAGES_DIR, data.MASKS_DIR):
        (tmp_path / sub / "cam1").mkdir()
        for k in (0, 1):
            ext = ".png"
            (tmp_path / sub / f"frame_{k:03d}{ext}").rename(tmp_path / sub / "cam1" / f"frame_{k:03d}{ext}")
    (tmp_path / data.SPLITS_DIR / "default.txt").write_text("cam1/frame_000\ncam1/frame_001\nframe_002\nframe_003\n")
    tree = data.resolve_tree(tmp_path)
    assert tree.check_complete() == {"train": 2, "full-val": 2}
    assert any("cam1" in image for image, _ in tree.pairs("train") + tree.pairs("full-val"))


# --- unchecked values ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--bn-momentum", "2"], r"--bn-momentum must be in \[0, 1\)"),
    (["--poly-power", "-1"], "--poly-power must be positive"),
    (["--optimizer", "sgd", "--momentum", "-3"], r"--momentum must be in \[0, 1\)"),
    (["--aspp-filters", "0"], "--aspp-filters must be at least 1"),
    (["--num-train", "-3"], "--num-train must be at least 1"),
    (["--input-size", "96", "--resize-before-crop", "64"], "--resize-before-crop 64 is smaller"),
    (["--iterations", "3", "--epochs", "5"], "give one of them"),
])
def test_training_values_that_cannot_work_are_refused_before_anything_is_written(tmp_path, flags, message):
    args = train.parse_args(["--run-dir", str(tmp_path / "run"), *flags])
    with pytest.raises(config.ConfigError, match=message):
        train.main(args)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("variable", ["DEEPLAB_DILATED_CONV", "DEEPLAB_WINOGRAD"])
def test_a_bad_kernel_setting_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys, variable):
    monkeypatch.setenv(variable, "fast")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(train.main, train.parse_args, ["--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert err.startswith(f"error: {variable}='fast': expected one of (")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module, argv", [
    (predict, ["--model", "m.keras", "--camera", "-1"]),
    (download_data, ["--synthetic", "--num-train", "-3"]),
    (evaluate, ["--resolution", "input", "--batch-size", "0"]),
])
def test_negative_counts_and_indices_are_usage_errors(module, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(argv)
    assert exit_info.value.code == 2 and "must be >=" in capsys.readouterr().err


def test_export_formats_with_a_typo_beside_all_are_refused():
    with pytest.raises(deploy.ExportError, match="bogus"):
        deploy.resolve_formats("all,bogus")


def test_class_costs_without_navigation_is_refused(tmp_path):
    _photos(tmp_path / "photos")
    with pytest.raises(config.ConfigError, match="--class-costs only changes navigation"):
        predict.main(predict.parse_args(["--model", "m.keras", str(tmp_path / "photos"), "--class-costs", "road=0"]))


def test_an_aux_head_checkpoint_says_to_use_best_keras():
    inputs = keras.Input((None, None, 3))
    logits = keras.layers.Conv2D(3, 1, name="logits")(inputs)
    both = keras.layers.Concatenate(name="logits_and_aux")([logits, logits])
    with pytest.raises(inference.ModelFileError, match="best.keras"):
        inference.check_classes(keras.Model(inputs, both), data.ClassTable(("a", "b", "c"), ((0, 0, 0), (1, 1, 1),
                                                                                            (2, 2, 2))), "last.keras")


# --- one tiny run for the module: schedule, split record, navigation memory ------------------------

@pytest.fixture(scope="module")
def poly_run(tmp_path_factory):
    """One epoch of TINY_RUN with a poly schedule, on a copy of the synthetic tree it may change."""
    base = tmp_path_factory.mktemp("faults")
    download_data.ensure_synthetic(base / "data", 12, 8, progress=False, min_size=64, max_size=128)
    run_dir = base / "run"
    argv = tiny_argv(base / "data", run_dir, "--epochs", "1", "--schedule", "poly", "--optimizer", "sgd",
                     "--lr", "0.01")
    train.main(train.parse_args(argv))
    return {"run_dir": run_dir, "argv": argv, "root": download_data.synthetic_root(base / "data")}


def _lr_column(run_dir: Path) -> list[float]:
    with open(run_dir / "log.csv") as f:
        return [float(row["learning_rate"]) for row in csv.DictReader(f)]


def test_a_longer_continued_poly_run_does_not_train_at_rate_zero(poly_run, tmp_path, capsys):
    run_dir = tmp_path / "continued"
    shutil.copytree(poly_run["run_dir"], run_dir)
    argv = [*poly_run["argv"][:3], str(run_dir), *poly_run["argv"][4:], "--verbose", "1", "--epochs", "2"]
    capsys.readouterr()
    train.main(train.parse_args(argv))
    out = capsys.readouterr().out
    rates = _lr_column(run_dir)
    assert len(rates) == 2 and rates[1] > 1e-4, rates  # 0 before: the old 3-step schedule had ended
    assert "now runs over 6 steps (it was 3)" in out
    assert "lr 0.0e+00" not in out and f"lr {rates[1]:.1e}" in out  # the printed rate is the one used


def test_the_run_records_its_splits_and_evaluate_refuses_a_changed_test_split(poly_run, capsys):
    saved = json.loads((poly_run["run_dir"] / "config.json").read_text())
    assert set(saved["splits"]) == {"train", "val", "test"} and saved["splits"]["test"]["count"] == 4
    listing = poly_run["root"] / data.SPLITS_DIR / "val.txt"
    original = listing.read_text()
    try:
        # The list grows by two training images: the halves reshuffle and test may hold them.
        train_ids = data.read_ids(poly_run["root"] / data.SPLITS_DIR / "train.txt")
        listing.write_text(original + "".join(f"{i}\n" for i in train_ids[:2]))
        args = evaluate.parse_args(["--run-dir", str(poly_run["run_dir"]), "--out-dir",
                                    str(poly_run["run_dir"] / "eval_changed")])
        with pytest.raises(data.DataError, match="not the one this run used"):
            evaluate.main(args)
        assert not (poly_run["run_dir"] / "eval_changed").exists()
    finally:
        listing.write_text(original)


def test_evaluate_output_stride_on_mobilenet_is_a_clear_error(poly_run):
    args = evaluate.parse_args(["--run-dir", str(poly_run["run_dir"]), "--output-stride", "8"])
    with pytest.raises(config.ConfigError, match="only a ResNet-50 model"):
        evaluate.main(args)


def test_navigation_respects_max_pixels(poly_run, tmp_path):
    model = inference.load_model(poly_run["run_dir"] / "best.keras")
    predictor = inference.Predictor(model, mode="auto", crop_size=64, stride=48, max_pixels=64 * 64)
    image = np.random.default_rng(0).uniform(0, 255, (1, 150, 200, 3)).astype(np.float32)
    probs = predictor.planning_probabilities(image)
    assert probs.shape[0] * probs.shape[1] <= 64 * 64 and probs.shape[2] == 21
    _photos(tmp_path / "photos", ("big.jpg",), size=(200, 150))
    written = predict.main(predict.parse_args([
        "--model", str(poly_run["run_dir"] / "best.keras"), str(tmp_path / "photos"), "--out",
        str(tmp_path / "out"), "--navigation", "safe", "--mode", "auto", "--crop-size", "64", "--stride", "48",
        "--max-pixels", str(64 * 64)]))
    assert np.asarray(Image.open(written[0])).shape == (150, 200)  # the mask at full size, by windows
    record = json.loads((tmp_path / "out" / predict.NAVIGATION_LOG).read_text().splitlines()[0])
    assert record["image"].endswith("big.jpg") and len(record["sector_costs"]) == 5
