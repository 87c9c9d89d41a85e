"""compare.py: runs side by side from their config.json, log.csv and metrics.json.

The run directories are written here as train.py and evaluate.py write them: config.json from
the run settings' declaration plus what a real data tree records, metrics.json from the
confusion matrix's own report plus evaluate.py's keys, log.csv with train.py's columns.
tests/test_workflow.py compares runs that train.py and evaluate.py really wrote.
"""
import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

import compare as compare_script
import metrics
from kit import compare
from kit import config
from kit import data
from kit import figures
from kit.data import ClassTable

ROOT = Path(__file__).resolve().parents[1]
VOC = ClassTable.voc()
# log.csv's columns in train.py's order (RunState.on_epoch_end: epoch, Keras' logs, learning rate, seconds).
LOG_COLUMNS = ("epoch", "loss", "mean_accuracy", "mean_iou", "pixel_accuracy", "val_loss", "val_mean_accuracy",
               "val_mean_iou", "val_pixel_accuracy", "learning_rate", "seconds")


@pytest.fixture(scope="module")
def tree(small_voc):
    return data.resolve_tree(small_voc)


def write_run(path: Path, tree, val_iou, val_loss, matrix, classes: ClassTable = VOC, subset="test",
              metrics_json=True, **flags) -> Path:
    """A run directory as train.py (config.json, log.csv) and evaluate.py (metrics.json) leave it."""
    path.mkdir(parents=True)
    settings = config.resolve(argparse.Namespace(**flags), config.TRAIN, presets=("chapter", "demo", "demo+chapter"))
    settings.update({**tree.describe(), "classes": classes.to_json(), "train_split": "train",
                     "num_train_images": len(tree.ids("train")), "num_val_images": len(tree.ids("val")),
                     "num_test_images": len(tree.ids("test")), "splits": tree.split_record("train"),
                     "run_dir": str(path)})
    (path / config.RUN_CONFIG).write_text(json.dumps(settings, indent=2))
    with open(path / config.RUN_LOG, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        for epoch, (iou, loss) in enumerate(zip(val_iou, val_loss), 1):
            writer.writerow({"epoch": epoch, "loss": loss + 0.1, "mean_accuracy": 0.5, "mean_iou": iou - 0.05,
                             "pixel_accuracy": 0.8, "val_loss": loss, "val_mean_accuracy": 0.5,
                             "val_mean_iou": iou, "val_pixel_accuracy": 0.8, "learning_rate": settings["lr"],
                             "seconds": 2.5})
    if metrics_json:
        cm = metrics.ConfusionMatrix(classes.num_classes)
        cm.matrix[:] = matrix
        report = {**cm.report(classes.names), "num_images": len(tree.ids(subset)), "subset": subset,
                  "resolution": "original", "tta": "none", "scales": "1", "mode": "auto", "crop_size": 513,
                  "stride": 341, "max_pixels": 2048 * 2048, "output_stride": 16, "trained_output_stride": 16,
                  "slid_images": 0, "model": str(path / "best.keras"), "data_root": str(tree.root),
                  "classes": list(classes.names)}
        (path / config.RUN_METRICS).write_text(json.dumps(report, indent=2) + "\n")
    return path


def matrix_of(diagonal: dict, off: dict = (), n=21) -> np.ndarray:
    cm = np.zeros((n, n), np.int64)
    for c, v in diagonal.items():
        cm[c, c] = v
    for (t, p), v in dict(off).items():
        cm[t, p] = v
    return cm


CAR, CAT = VOC.names.index("car"), VOC.names.index("cat")


@pytest.fixture
def two_runs(tmp_path, tree):
    # sgd: best epoch 2 of 3; adam: best epoch 3 of 3. Classes 0 and car scored, cat only in adam.
    sgd = write_run(tmp_path / "sgd", tree, [0.30, 0.55, 0.50], [1.2, 0.8, 0.9],
                    matrix_of({0: 60, CAR: 20}, {(CAR, 0): 20}), optimizer="sgd", lr=0.01)
    adam = write_run(tmp_path / "adam", tree, [0.20, 0.40, 0.45], [1.5, 1.0, 0.95],
                     matrix_of({0: 80, CAR: 30, CAT: 5}, {(CAR, 0): 10}), optimizer="adam", lr=1e-3)
    return sgd, adam


def test_table_shows_settings_that_differ_best_epoch_scores_and_per_class_iou(two_runs, tmp_path):
    sgd, adam = two_runs
    result = compare.compare([sgd, adam], tmp_path / "out")
    table = result.table
    assert list(table.columns) == ["sgd", "adam"]
    settings = table.xs(compare.SETTINGS, level="section")
    assert settings.loc["optimizer"].tolist() == ["sgd", "adam"] and settings.loc["lr"].tolist() == ["0.01", "0.001"]
    assert set(settings.index) == {"optimizer", "lr"}  # input_size, data, splits... are the same
    training = table.xs(compare.TRAINING, level="section")
    assert training.loc[compare.BEST_EPOCH].tolist() == [2, 3]
    assert training.loc["best val_mean_iou"].tolist() == [0.55, 0.45]
    assert training.loc["val_loss at the best epoch"].tolist() == [0.8, 0.95]
    assert training.loc["epochs trained"].tolist() == [3, 3] and training.loc["training seconds"].tolist() == [7.5, 7.5]
    scores = table.xs(compare.SCORES, level="section")
    for run, column in ((sgd, "sgd"), (adam, "adam")):
        saved = json.loads((run / "metrics.json").read_text())
        for key in compare.SCORE_KEYS:
            assert scores.loc[key, column] == saved[key]
    per_class = table.xs(compare.PER_CLASS, level="section")
    assert list(per_class.index) == list(VOC.names)
    assert per_class.loc["car"].tolist() == [0.5, 0.75]  # 20 / (20 + 20), 30 / (30 + 10)
    assert per_class.loc["cat"].tolist() == [None, 1.0] and per_class.loc["dog"].tolist() == [None, None]
    md = result.markdown
    assert "| mean_iou | " in md and "| car | 0.5000 | **0.7500** |" in md and "| cat | n/a | 1.0000 |" in md
    assert "| optimizer | sgd | adam |" in md and f"| {compare.BEST_EPOCH} | 2 | 3 |" in md
    # A class in no run's labels or predictions is left out of the Markdown (not of the table).
    assert "| dog |" not in md and "18 of 21 classes are in no run's labels or predictions" in md
    assert (tmp_path / "out" / "compare.md").read_text() == md


def test_csv_holds_the_same_table_at_full_precision(two_runs, tmp_path):
    compare.compare(list(two_runs), tmp_path / "out")
    saved = pd.read_csv(tmp_path / "out" / "compare.csv", index_col=[0, 1])
    assert list(saved.columns) == ["sgd", "adam"] and saved.index.names == ["section", "item"]
    assert float(saved.loc[(compare.SCORES, "mean_iou"), "adam"]) == json.loads(
        (two_runs[1] / "metrics.json").read_text())["mean_iou"]
    assert saved.loc[(compare.SETTINGS, "optimizer")].tolist() == ["sgd", "adam"]
    assert pd.isna(saved.loc[(compare.PER_CLASS, "cat"), "sgd"])  # n/a in Markdown, empty in the CSV
    assert int(saved.loc[(compare.TRAINING, compare.BEST_EPOCH), "sgd"]) == 2


def test_curves_plot_names_every_run(two_runs, tmp_path):
    compare.compare(list(two_runs), tmp_path / "out")
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    logs = {p.name: pd.read_csv(p / "log.csv") for p in two_runs}
    fig = figures.run_curves(logs, tmp_path / "c.png", {"sgd": 2, "adam": 3})
    iou_axes, loss_axes = fig.axes
    assert [t.get_text() for t in iou_axes.get_legend().get_texts()] == ["sgd", "adam"]
    lines = [line for line in iou_axes.get_lines() if line.get_label() in ("sgd", "adam")]
    assert [list(line.get_ydata()) for line in lines] == [[0.30, 0.55, 0.50], [0.20, 0.40, 0.45]]
    adam_loss = [list(line.get_ydata()) for line in loss_axes.get_lines() if line.get_label() == "adam"]
    assert adam_loss == [[1.5, 1.0, 0.95]]
    stars = [line for line in iou_axes.get_lines() if line.get_marker() == "*"]
    assert [(s.get_xdata()[0], s.get_ydata()[0]) for s in stars] == [(2, 0.55), (3, 0.45)]
    assert to_hex(stars[0].get_color()) == to_hex(lines[0].get_color())


def test_main_prints_the_markdown(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    compare_script.main(compare_script.parse_args([*map(str, two_runs), "--out", str(out)]))
    printed = capsys.readouterr().out
    assert (out / "compare.md").read_text() in printed and "compare.csv" in printed


def run_cli(*argv):
    return subprocess.run([sys.executable, str(ROOT / "compare.py"), *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_other_class_tables_are_refused_by_name(two_runs, tmp_path, tree):
    own = ClassTable(("ground", "wall"), ((0, 0, 0), (90, 90, 250)))
    other = write_run(tmp_path / "walls", tree, [0.5], [1.0], matrix_of({0: 5, 1: 5}, n=2), classes=own)
    with pytest.raises(compare.CompareError, match=r"walls use\(s\) another class table than .*sgd.*2 classes: ground"):
        compare.compare([*two_runs, other], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    done = run_cli(*two_runs, other, "--out", tmp_path / "out")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "walls" in done.stderr and "Traceback" not in done.stderr


def test_same_names_in_other_colours_are_another_table(two_runs, tmp_path, tree):
    recoloured = ClassTable(VOC.names, ((1, 2, 3), *VOC.colours[1:]), VOC.ignore_colours)
    other = write_run(tmp_path / "recoloured", tree, [0.5], [1.0], matrix_of({0: 5}), classes=recoloured)
    with pytest.raises(compare.CompareError, match="recoloured.*the same names in other colours"):
        compare.compare([two_runs[0], other], tmp_path / "out")


def test_a_missing_run_directory_is_named(two_runs, tmp_path):
    done = run_cli(two_runs[0], tmp_path / "nowhere")
    assert done.returncode == 1 and done.stderr == f"error: no run directory {tmp_path / 'nowhere'}; give the run " \
                                                   f"directories train.py wrote (--run-dir, e.g. eval/demo)\n"
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    with pytest.raises(config.ConfigError, match="holds no config.json"):
        compare.compare([two_runs[0], not_a_run], tmp_path / "out")


def test_a_run_not_yet_evaluated_says_how_to_evaluate_it(two_runs, tmp_path, tree):
    fresh = write_run(tmp_path / "fresh", tree, [0.5], [1.0], None, metrics_json=False)
    with pytest.raises(compare.CompareError, match=rf"{fresh} has no metrics.json: evaluate it first: "
                                                   rf"python evaluate.py --run-dir {fresh}$"):
        compare.compare([*two_runs, fresh], tmp_path / "out")


def test_runs_scored_on_different_splits_are_refused(two_runs, tmp_path, tree):
    val = write_run(tmp_path / "val", tree, [0.5], [1.0], matrix_of({0: 5}), subset="val")
    with pytest.raises(compare.CompareError, match="different splits .*sgd: test.*val: val"):
        compare.compare([two_runs[0], val], tmp_path / "out")


def test_unreadable_files_and_repeated_runs_are_errors(two_runs, tmp_path):
    sgd, adam = two_runs
    with pytest.raises(compare.CompareError, match="given twice"):
        compare.compare([sgd, adam, sgd], tmp_path / "out")
    (adam / "log.csv").write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(compare.CompareError, match="has no column val_mean_iou"):
        compare.compare([sgd, adam], tmp_path / "out")
    (adam / "log.csv").unlink()
    with pytest.raises(compare.CompareError, match="has no log.csv: no epoch of it finished"):
        compare.compare([sgd, adam], tmp_path / "out")
    (sgd / "metrics.json").write_text("{not json")
    with pytest.raises(compare.CompareError, match="cannot read .*metrics.json"):
        compare.compare([sgd], tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(compare.CompareError, match="is a file"):
        compare.compare([sgd], tmp_path / "file")


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path, tree):
    runs = [write_run(tmp_path / parent / "run", tree, [0.5], [1.0], matrix_of({0: 5}), seed=seed)
            for parent, seed in (("a", 0), ("b", 1))]
    table = compare.compare(runs, tmp_path / "out").table
    assert list(table.columns) == [str(r) for r in runs]
    assert table.loc[(compare.SETTINGS, "seed")].tolist() == ["0", "1"]


def test_one_run_is_summarised(two_runs, tmp_path):
    result = compare.compare([two_runs[0]], tmp_path / "out")
    assert compare.SETTINGS not in result.table.index.get_level_values("section")
    assert "## Settings that differ\n\nnone" in result.markdown and "**" not in result.markdown


def test_markdown_tables_escape_pipes_and_right_align_numbers():
    from kit import tables

    frame = pd.DataFrame({"IoU": [0.5, float("nan")], "pixels": [3, 0], "note": ["a|b", None]},
                         index=pd.Index(["road", "car"], name="class"))
    assert tables.markdown(frame) == ("| class | IoU | pixels | note |\n| --- | ---: | ---: | --- |\n"
                                      "| road | 0.5000 | 3 | a\\|b |\n| car | n/a | 0 | n/a |\n")
    assert tables.markdown(frame[["note"]], right=True).splitlines()[1] == "| --- | ---: |"


def test_scores_of_an_earlier_model_are_refused(tmp_path, tree):
    """Training went on after evaluate.py and saved a better best.keras: the old scores must not
    sit beside the new best epoch as if they were that model's."""
    run = write_run(tmp_path / "run", tree, [0.5, 0.6], [1.0, 0.9], matrix_of({0: 5}))
    (run / "best.keras").write_bytes(b"the model evaluate.py scored")
    report = json.loads((run / config.RUN_METRICS).read_text())
    report["model_sha256"] = compare.model_digest(run / "best.keras")  # as evaluate.py records it
    (run / config.RUN_METRICS).write_text(json.dumps(report))
    compare.compare([run], tmp_path / "out")
    (run / "best.keras").write_bytes(b"a better model saved by a longer run")
    with pytest.raises(compare.CompareError, match=rf"scores an earlier version of .*best.keras.*"
                                                   rf"python evaluate.py --run-dir {run}\)$"):
        compare.compare([run], tmp_path / "out")
