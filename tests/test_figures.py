"""kit/figures.py: the class legends and the confusion matrix name exactly the classes shown, in
the data set's colours (matplotlib only; no model)."""
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from kit import datasets
from kit import figures
from kit import ground
from kit import navigation
from kit.data import ClassTable, ValueTable
from kit.voc import IGNORE_LABEL

VOC = ClassTable.voc()
ADE20K = ValueTable(datasets.ADE20K_NAMES, datasets.ADE20K_COLOURS, (), datasets.ade20k_values())
# An own data set's table: colours that are not VOC's, so a legend drawn in VOC colours fails.
OWN = ClassTable(("ground", "wall", "robot", "cable"), ((10, 200, 30), (90, 90, 250), (250, 20, 200), (20, 20, 20)),
                 ((255, 255, 255),))


def legend_entries(fig):
    """[(name, (r, g, b) in 0..255)] of the figure's one class legend, in order."""
    (legend,) = fig.legends
    patches = legend.get_patches()
    return [(text.get_text(), tuple(round(v * 255) for v in to_rgb(patch.get_facecolor())))
            for text, patch in zip(legend.get_texts(), patches)]


def masks(*classes, size=(12, 16)):
    """One (H, W) uint8 mask per tuple of class indices, each class a band of rows."""
    out = []
    for values in classes:
        mask = np.zeros(size, np.uint8)
        for k, v in enumerate(values):
            mask[k * size[0] // len(values):] = v
        out.append(mask)
    return out


def test_prediction_grid_legend_names_exactly_the_classes_shown(tmp_path):
    car, chair, dog, person = (VOC.names.index(n) for n in ("car", "chair", "dog", "person"))
    label_a, pred_a, label_b, pred_b = masks((0, car), (0, chair), (0, person, IGNORE_LABEL), (car, person))
    image = np.full((12, 16, 3), 120.0)
    fig = figures.prediction_grid([(image, label_a, pred_a), (image, label_b, pred_b)], tmp_path / "grid.png", VOC)
    entries = legend_entries(fig)
    # The union of labels and predictions in class order, then the ignore colour of the labels.
    assert [name for name, _ in entries] == ["background", "car", "chair", "person", figures.IGNORED]
    assert dict(entries)["car"] == VOC.colours[car] and dict(entries)[figures.IGNORED] == (224, 224, 192)
    assert "dog" not in dict(entries) and dog not in (car, chair, person)
    assert fig.legends[0].get_title().get_text() == "classes shown (4 of 21)"
    with Image.open(tmp_path / "grid.png") as saved:  # the legend is below the grid, inside the file
        assert saved.size[1] > 2 * 3 * figures.DPI


def test_prediction_grid_uses_the_data_sets_own_colours_and_names(tmp_path):
    label, pred = masks((0, 2), (0, 3))
    fig = figures.prediction_grid([(np.zeros((12, 16, 3)), label, pred)], tmp_path / "own.png", OWN)
    assert legend_entries(fig) == [("ground", (10, 200, 30)), ("robot", (250, 20, 200)), ("cable", (20, 20, 20))]


def test_prediction_grid_without_ignored_pixels_has_no_ignore_entry(tmp_path):
    label, pred = masks((1,), (1, 0))
    fig = figures.prediction_grid([(np.zeros((12, 16, 3)), label, pred)], tmp_path / "g.png", OWN)
    assert [name for name, _ in legend_entries(fig)] == ["ground", "wall"]


def matrix_axes(fig):
    return {ax.get_label(): ax for ax in fig.axes}


def tick_names(ax, axis):
    return [t.get_text() for t in (ax.get_yticklabels() if axis == "y" else ax.get_xticklabels())]


def test_confusion_matrix_names_the_classes_in_labels_or_predictions(tmp_path):
    cm = np.zeros((21, 21), np.int64)
    car, chair, cat = (VOC.names.index(n) for n in ("car", "chair", "cat"))
    cm[0, 0], cm[car, car], cm[car, chair] = 50, 30, 10  # chair only ever predicted
    cm[cat, cat] = 5
    fig = figures.confusion_matrix_figure(cm, tmp_path / "cm.png", VOC)
    axes = matrix_axes(fig)
    shown = ["background", "car", "cat", "chair"]
    assert tick_names(axes["true classes"], "y") == shown and tick_names(axes["predicted classes"], "x") == shown
    assert "4 of 21 classes" in axes["confusion matrix"].get_title()
    strip = axes["true classes"].get_images()[0].get_array()  # (4, 1, 3): the classes' own colours
    assert [tuple(int(v) for v in c) for c in strip[:, 0]] == [VOC.colours[c] for c in (0, car, cat, chair)]
    matrix = axes["confusion matrix"].get_images()[0].get_array()
    np.testing.assert_allclose(matrix[1], [0, 0.75, 0, 0.25])  # car's row, normalised over its pixels
    assert (tmp_path / "cm.png").is_file()


def test_confusion_matrix_of_all_voc_classes_says_all(tmp_path):
    cm = np.eye(21, dtype=np.int64) * 7
    fig = figures.confusion_matrix_figure(cm, tmp_path / "cm.png", VOC)
    axes = matrix_axes(fig)
    assert tick_names(axes["true classes"], "y") == list(VOC.names)
    assert "all 21 classes" in axes["confusion matrix"].get_title()


def test_ade20k_confusion_matrix_stays_readable(tmp_path):
    """150 classes: only those that occur, at least 8 pt labels, no more than 30 inches of matrix."""
    rng = np.random.default_rng(0)
    present = np.sort(rng.choice(150, 60, replace=False))
    cm = np.zeros((150, 150), np.int64)
    cm[present, present] = 100
    cm[present, np.roll(present, 1)] = 20
    fig = figures.confusion_matrix_figure(cm, tmp_path / "ade.png", ADE20K)
    axes = matrix_axes(fig)
    labels = axes["true classes"].get_yticklabels()
    assert [t.get_text() for t in labels] == [ADE20K.names[c] for c in present]
    assert min(t.get_fontsize() for t in labels) >= 8
    assert "60 of 150 classes" in axes["confusion matrix"].get_title()
    assert max(fig.get_size_inches()) <= 0.45 * 60 + 4
    # Every class of the 150 at once stays within bounds too: 0.2 inch a class.
    full = figures.confusion_matrix_figure(np.eye(150, dtype=np.int64), tmp_path / "all.png", ADE20K)
    assert max(full.get_size_inches()) <= 0.2 * 150 + 4


def test_empty_confusion_matrix_says_so(tmp_path):
    fig = figures.confusion_matrix_figure(np.zeros((21, 21)), tmp_path / "cm.png", VOC)
    assert [t.get_text() for t in fig.axes[0].texts] == ["no labelled pixels"]


def one_hot(pred, num_classes):
    return np.eye(num_classes, dtype=np.float32)[pred]  # (H, W, C)


def test_navigation_figure_legend_names_the_predicted_classes(tmp_path):
    person, car = VOC.names.index("person"), VOC.names.index("car")
    preds = masks((0, person), (car, 0), size=(32, 40))
    rows = [(np.zeros((32, 40, 3)), pred, navigation.navigate(one_hot(pred, 21), "safe")) for pred in preds]
    fig = figures.navigation_figure(rows, tmp_path / "nav.png", VOC, profile="safe")
    assert legend_entries(fig) == [(VOC.names[c], VOC.colours[c]) for c in (0, car, person)]


def test_ground_figure_legend_names_the_predicted_classes(tmp_path):
    (pred,) = masks((0, 1, 3), size=(48, 64))  # ground, wall, cable
    navigator = ground.GroundNavigator(ground.Camera(height=1.0, pitch=45.0, hfov=90.0), ground.Grid(cell=0.1),
                                       "safe", navigation.class_costs_for(OWN.names))
    result = navigator.navigate(one_hot(pred, OWN.num_classes))
    fig = figures.ground_figure(np.zeros((48, 64, 3)), pred, result, navigator, tmp_path / "g.png", OWN)
    assert [name for name, _ in legend_entries(fig)] == ["ground", "wall", "cable"]
    assert (tmp_path / "g.png").is_file()


@pytest.mark.parametrize("values, expected", [((0, 3, IGNORE_LABEL), [0, 3]), ((IGNORE_LABEL,), [])])
def test_classes_present_leaves_out_the_ignore_label(values, expected):
    assert figures.classes_present(masks(values), 4) == expected
