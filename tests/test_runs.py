"""Faults a careless or unlucky user meets: each ends in a clear error, and no run loses data."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kit import cli
from kit import config
from kit import data
import evaluate
import export
import predict
from kit import inference
import train
from kit import training

from conftest import tiny_argv  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A finished one-epoch run, copied afresh for each test that damages it."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    train.main(train.parse_args(tiny_argv(data_dir, run_dir, "--epochs", "1", "--steps-per-epoch", "2")))
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _snapshot(folder: Path) -> dict:
    """Modification times of the run's files; the lock file is rewritten by every process that takes it."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != training.LOCK_FILE}


def test_fresh_refuses_a_folder_that_holds_no_run(data_dir, tmp_path):
    folder = tmp_path / "eval"  # e.g. the parent of every run
    (folder / "other_run").mkdir(parents=True)
    (folder / "other_run" / "best.keras").write_bytes(b"precious")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(training.RunError, match="holds no train.py run"):
        train.main(train.parse_args(tiny_argv(data_dir, folder, "--fresh", "--epochs", "1")))
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "other_run" / "best.keras").exists()


def test_fresh_on_a_new_run_directory_just_starts(tmp_path):
    run_dir = tmp_path / "eval" / "demo"  # the quick start's `train.py --demo --fresh` on a clean clone
    with training.RunLock(run_dir):  # train.py takes the lock, then discards
        assert training.discard_run(run_dir) == []
        assert [p.name for p in run_dir.iterdir()] == [training.LOCK_FILE]


def test_a_run_refused_before_writing_leaves_no_folder_it_made(data_dir, tmp_path):
    run_dir = tmp_path / "new_run"
    with pytest.raises(data.DataError):
        train.main(train.parse_args(tiny_argv(tmp_path / "no_data_here", run_dir, "--dataset", "voc")))
    assert not run_dir.exists()
    kept = tmp_path / "kept"  # a folder the user made is left as it was: no lock file left in it
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(training.RunError, match="holds no train.py run"):
        train.main(train.parse_args(tiny_argv(data_dir, kept, "--fresh", "--epochs", "1")))
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_fresh_removes_only_the_run_files(run_copy):
    (run_copy / "my_notes.txt").write_text("keep me")
    removed = training.discard_run(run_copy)
    assert {"config.json", "best.keras", "state", "log.csv"} <= set(removed)
    assert sorted(p.name for p in run_copy.iterdir()) == [training.LOCK_FILE, "my_notes.txt"]  # the lock stays


def test_a_second_process_on_a_run_directory_is_refused_with_the_holders_pid(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    with training.RunLock(run_dir):
        with pytest.raises(training.RunError, match=rf"in use by train.py \(pid {os.getpid()}\)"):
            train.main(train.parse_args(tiny_argv(data_dir, run_dir, "--epochs", "1")))
    with training.RunLock(run_dir):  # released: free again
        pass


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_checkpoints_without_a_valid_state_are_an_error_not_a_fresh_start(data_dir, run_copy, damage):
    state = run_copy / "state" / "state.json"
    if damage == "deleted":
        state.unlink()
    else:
        state.write_text(state.read_text()[:40])
    before = _snapshot(run_copy)
    with pytest.raises(training.RunError, match="--fresh"):
        train.main(train.parse_args(tiny_argv(data_dir, run_copy, "--epochs", "2")))
    assert _snapshot(run_copy) == before  # best.keras, the log and the config are untouched


def test_a_truncated_last_checkpoint_is_an_error_naming_it(data_dir, run_copy):
    last = run_copy / "state" / "last.keras"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(training.RunError, match=r"last\.keras cannot be loaded"):
        train.main(train.parse_args(tiny_argv(data_dir, run_copy, "--epochs", "2", "--steps-per-epoch", "2")))


def test_changing_the_data_on_resume_is_refused_before_anything_is_regenerated(data_dir, run_copy):
    recipe = data_dir / "synthetic" / "synthetic.json"
    before = recipe.read_text(), _snapshot(data_dir)
    with pytest.raises(config.ConfigError, match="num_train"):
        train.main(train.parse_args(tiny_argv(data_dir, run_copy, "--epochs", "2", "--num-train", "14")))
    assert (recipe.read_text(), _snapshot(data_dir)) == before


def test_leftover_temporary_checkpoints_are_removed_on_resume(data_dir, run_copy):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    leftover = run_copy / "state" / f".last.keras.tmp-{dead}-0a1b2c3d.keras"
    leftover.write_bytes(b"\0" * 1000)
    train.main(train.parse_args(tiny_argv(data_dir, run_copy, "--epochs", "2", "--steps-per-epoch", "2")))
    assert not leftover.exists()
    assert [r["epoch"] for r in json.loads((run_copy / "state" / "state.json").read_text())["history"]] == [1, 2]


def test_a_full_disk_stops_before_a_checkpoint_is_written(data_dir, run_copy, monkeypatch):
    last = run_copy / "state" / "last.keras"
    before = last.read_bytes()
    monkeypatch.setattr(training.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 10))
    with pytest.raises(training.RunError, match="not enough disk space"):
        train.main(train.parse_args(tiny_argv(data_dir, run_copy, "--epochs", "2", "--steps-per-epoch", "2")))
    assert last.read_bytes() == before  # the last good checkpoint is intact
    assert json.loads((run_copy / "state" / "state.json").read_text())["epoch"] == 0


def test_a_huge_finite_loss_is_divergence(data_dir, tmp_path, monkeypatch):
    real = training.RunState.on_epoch_begin

    def blow_up(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch == 1:
            kernel = self.model.get_layer("classifier").kernel
            kernel.assign(kernel * 1e12)  # finite, absurd logits: a loss near 1e12

    monkeypatch.setattr(training.RunState, "on_epoch_begin", blow_up)
    with pytest.raises(SystemExit, match=r"diverged: loss \d\.\d+e\+\d\d"):
        train.main(train.parse_args(tiny_argv(data_dir, tmp_path / "run", "--epochs", "3", "--steps-per-epoch", "2")))
    assert json.loads((tmp_path / "run" / "state" / "state.json").read_text())["epoch"] == 0


def test_divergence_in_the_first_epoch_says_nothing_was_kept(data_dir, tmp_path, monkeypatch):
    real = training.RunState.on_epoch_begin

    def poison(self, epoch, logs=None):
        real(self, epoch, logs)
        kernel = self.model.get_layer("classifier").kernel
        kernel.assign(tf.fill(kernel.shape, float("nan")))

    monkeypatch.setattr(training.RunState, "on_epoch_begin", poison)
    with pytest.raises(SystemExit, match="No epoch finished, so nothing was kept"):
        train.main(train.parse_args(tiny_argv(data_dir, tmp_path / "run", "--epochs", "2", "--steps-per-epoch", "2")))


def test_evaluate_a_missing_run_is_an_error_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config.ConfigError, match="no run directory"):
        evaluate.main(evaluate.parse_args(["--run-dir", str(tmp_path / "nope")]))
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(config.ConfigError, match="not a train.py run"):
        evaluate.main(evaluate.parse_args(["--run-dir", str(tmp_path / "not_a_run")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_run"]  # no data/ appeared


def test_evaluate_survives_a_corrupt_log(run_copy, tmp_path, capsys):
    (run_copy / "log.csv").write_bytes(b"epoch,loss\n1,\xff\xfe\n2")
    report = evaluate.main(evaluate.parse_args(["--run-dir", str(run_copy), "--out-dir", str(tmp_path),
                                                "--num-figures", "1"]))
    assert 0 <= report["mean_iou"] <= 1 and (tmp_path / "metrics.json").is_file()
    assert "training curves" in capsys.readouterr().err


def test_predict_faults(finished_run, tmp_path):
    model = str(finished_run / "best.keras")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(a / "x.jpg")
    Image.new("RGB", (50, 20), (10, 200, 10)).save(b / "x.jpg")
    Image.new("RGB", (20, 20), (10, 10, 200)).save(a / "x.png")
    deep = np.full((24, 32), 30000, np.uint16)  # a 16-bit grey image, mid-grey
    Image.fromarray(deep).save(a / "deep.png")
    written = predict.main(predict.parse_args(["--model", model, str(a), str(b), "--out", str(tmp_path / "out")]))
    names = sorted(p.name for p in (tmp_path / "out").glob("*_mask.png"))
    assert len(written) == 4 == len(names) and "a_x_jpg_mask.png" in names and "b_x_mask.png" in names
    assert np.asarray(inference.read_image(a / "deep.png")).max() == pytest.approx(30000 / 257, abs=0.01)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds no images"):
        predict.main(predict.parse_args(["--model", model, str(tmp_path / "empty"), "--out", str(tmp_path / "o")]))
    fake = tmp_path / "notes.keras"
    fake.write_text("not a model")
    with pytest.raises(inference.ModelFileError, match="notes.keras cannot be loaded"):
        inference.load_model(fake)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(inference.ModelFileError, match="junk.tflite cannot be loaded"):
        inference.load_model(junk)


def test_predict_takes_the_images_the_data_reader_lists_from_a_folder(tmp_path):
    """One list of image suffixes (kit.data.IMAGE_SUFFIXES) for data sets and predict.py's folders;
    a GIF is not in it (a data set's preview GIF beside its JPEG would be read as a duplicate)."""
    for name in ("b.PNG", "a.jpg", "c.JPEG", "d.gif"):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format={"jpg": "JPEG"}.get(name[2:], name[2:].upper()))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image
    assert [p.name for p in predict.collect([str(tmp_path)])] == ["a.jpg", "b.PNG", "c.JPEG"]


@pytest.mark.parametrize("size", ["0", "-5", "7"])
def test_export_sizes_must_be_positive_multiples_of_the_output_stride(finished_run, size):
    with pytest.raises(config.ConfigError, match="multiple of the model's output stride 16"):
        export.main(export.parse_args(["--run-dir", str(finished_run), "--size", size]))


@pytest.mark.parametrize("variable", ["DEEPLAB_DILATED_CONV", "DEEPLAB_WINOGRAD"])
def test_a_bad_kernel_setting_stops_evaluate_predict_and_export_with_one_error_line(
        finished_run, tmp_path, monkeypatch, capsys, variable):
    """The layers read these settings inside traced steps, where TensorFlow would wrap the error
    in its own type; loading the model checks them first (train.py: tests/test_faults.py)."""
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (90, 120, 60)).save(image)
    monkeypatch.setenv(variable, "fast")
    before = _snapshot(finished_run)
    for module, argv in [(evaluate, ["--run-dir", str(finished_run), "--out-dir", str(tmp_path / "ev")]),
                         (predict, ["--model", str(finished_run / config.RUN_BEST_MODEL), str(image),
                                    "--out", str(tmp_path / "pred")]),
                         (export, ["--run-dir", str(finished_run), "--formats", "savedmodel",
                                   "--out-dir", str(tmp_path / "exp")])]:
        with pytest.raises(SystemExit) as exit_info:
            cli.run(module.main, module.parse_args, argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and "Traceback" not in err, (module.__name__, err)
        assert err.startswith(f"error: {variable}='fast': expected one of ("), (module.__name__, err)
    assert not [p.name for p in tmp_path.iterdir() if p.name != "photo.png"]
    assert _snapshot(finished_run) == before


def test_entry_points_end_expected_failures_with_one_error_line(tmp_path):
    """As a user sees it: exit status 1, `error: ...`, no traceback (and one with --debug)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "evaluate.py", "--run-dir", str(tmp_path / "nope")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: no run directory")
    assert "Traceback" not in done.stderr
    debug = subprocess.run([sys.executable, "evaluate.py", "--run-dir", str(tmp_path / "nope"), "--debug"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
