"""Pictures for people: prediction grids, navigation, the confusion matrix and training curves (PNG files).

Every figure that draws class masks carries a colour legend naming the classes it shows, in
the data set's own colours and names (ClassTable), so a reader can tell car from chair. The
figures are built as matplotlib Figures (not through pyplot's global state), written
atomically, and returned, so a caller or a test can read what was drawn.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402

from kit import atomic  # noqa: E402
from kit import navigation  # noqa: E402
from kit.data import ClassTable  # noqa: E402
from kit.voc import IGNORE_LABEL  # noqa: E402

IGNORED = "ignored (not scored)"  # the legend entry of the ignore colour in ground truth
DPI = 80


def save(fig: Figure, path: str | Path) -> Figure:
    """Write `fig` as a PNG (atomically), cropped to what it draws, legends below the axes included."""
    with atomic.file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return fig


def classes_present(masks: Iterable[np.ndarray], num_classes: int) -> list[int]:
    """Ascending class indices that occur in any of the (H, W) masks; the ignore label is left out."""
    found = np.zeros(256, bool)
    for mask in masks:
        found[np.unique(np.asarray(mask).astype(np.uint8))] = True
    return [c for c in range(num_classes) if found[c]]


def class_legend(fig: Figure, classes: ClassTable, masks: list[np.ndarray], columns: int,
                 ignored_in: list[np.ndarray] = ()) -> Legend | None:
    """A legend under the figure's axes: a swatch in the data set's colour and the name of each
    class that occurs in `masks` (class order), then the ignore colour if any of `ignored_in`
    (ground truth) holds the ignore label. None when no mask holds a class."""
    present = classes_present(masks, classes.num_classes)
    handles = [Patch(facecolor=np.asarray(classes.colours[c]) / 255, edgecolor="black", linewidth=0.5,
                     label=classes.names[c]) for c in present]
    if any((np.asarray(mask) == IGNORE_LABEL).any() for mask in ignored_in):
        handles.append(Patch(facecolor=classes.palette()[IGNORE_LABEL] / 255, edgecolor="black", linewidth=0.5,
                             label=IGNORED))
    if not handles:
        return None
    title = f"classes shown ({len(present)} of {classes.num_classes})"
    # Below the axes (save() crops to include it): as wide as the figure, as many rows as it needs.
    return fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(columns, len(handles)),
                      fontsize=8, title=title, title_fontsize=9, frameon=False)


def prediction_grid(examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | Path,
                    classes: ClassTable | None = None) -> Figure:
    """Rows of input / ground truth / prediction in the data set's class colours, with a legend of
    the classes in the labels and predictions shown; examples are (image (H, W, 3) in [0, 255],
    label (H, W), prediction (H, W)). Returns the saved Figure."""
    classes = classes or ClassTable.voc()
    rows = max(len(examples), 1)
    fig = Figure(figsize=(9, 3 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    for row, (image, label, pred) in zip(axes, examples):
        pictures = (np.clip(image, 0, 255).astype(np.uint8), classes.colourize(label), classes.colourize(pred))
        for ax, picture, title in zip(row, pictures, ("input", "ground truth", "prediction")):
            ax.imshow(picture)
            ax.set_title(title)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    labels = [label for _, label, _ in examples]
    class_legend(fig, classes, [*labels, *(pred for _, _, pred in examples)], columns=5, ignored_in=labels)
    return save(fig, path)


def confusion_matrix_figure(cm: np.ndarray, path: str | Path, classes: ClassTable | None = None) -> Figure:
    """Row-normalised confusion matrix (each true class sums to 1) of the classes that occur in
    the labels or the predictions, named on both axes beside a strip of each class's colour.

    Classes in neither are left out, and the title says how many are shown: all 150 of ADE20K
    would be an unreadable 150 x 150 grid, and an empty row or column says nothing. Returns the
    saved Figure.
    """
    classes = classes or ClassTable.voc()
    cm = np.asarray(cm, dtype=np.float64)  # (C, C): rows true, columns predicted
    n = len(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    shown = np.flatnonzero((cm.sum(axis=0) > 0) | (cm.sum(axis=1) > 0))
    k = max(len(shown), 1)
    cell = float(np.clip(30 / k, 0.2, 0.45))  # inches per class: 21 classes at 0.45, 150 at 0.2
    fontsize = 10 if k <= 40 else 8
    fig = Figure(figsize=(cell * k + 4, cell * k + 3))
    ax = fig.subplots()
    ax.set_label("confusion matrix")
    if not len(shown):
        ax.text(0.5, 0.5, "no labelled pixels", ha="center", va="center")
        ax.axis("off")
        return save(fig, path)
    im = ax.imshow(norm[np.ix_(shown, shown)], cmap="Blues", vmin=0, vmax=1, aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    divider = make_axes_locatable(ax)
    colours = np.asarray(classes.colours, np.uint8)[shown]  # (k, 3)
    names = [classes.names[c] for c in shown]
    true_strip = divider.append_axes("left", size=0.2, pad=0.05)  # 0.2 inch wide
    true_strip.set_label("true classes")
    true_strip.imshow(colours[:, None], aspect="auto")
    true_strip.set_xticks([])
    true_strip.set_yticks(range(k), names, fontsize=fontsize)
    true_strip.set_ylabel("true")
    pred_strip = divider.append_axes("bottom", size=0.2, pad=0.05)
    pred_strip.set_label("predicted classes")
    pred_strip.imshow(colours[None], aspect="auto")
    pred_strip.set_yticks([])
    pred_strip.set_xticks(range(k), names, rotation=90, fontsize=fontsize)
    pred_strip.set_xlabel("predicted")
    fig.colorbar(im, cax=divider.append_axes("right", size=0.2, pad=0.1))
    what = (f"all {n} classes" if len(shown) == n else
            f"{len(shown)} of {n} classes (those in the labels or predictions)")
    ax.set_title(f"confusion matrix, rows normalised: {what}")
    return save(fig, path)


def training_curves(log_csv: str | Path, path: str | Path) -> bool:
    """Loss and metrics per epoch, train and validation, from train.py's log.csv.

    Returns False (and draws nothing) if the log is missing or empty; an unreadable log is
    reported on stderr rather than raised, so a damaged log never costs an evaluation its report.
    """
    log_csv = Path(log_csv)
    if not log_csv.is_file():
        return False
    try:
        with open(log_csv, encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) for r in rows]
        series = {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as err:
        print(f"warning: training curves not drawn: {log_csv} is unreadable ({type(err).__name__}: {err})",
              file=sys.stderr)
        return False
    if not rows:
        return False
    panels = [("loss", "loss"), ("mean_iou", "mean IoU"), ("pixel_accuracy", "pixel accuracy"),
              ("learning_rate", "learning rate")]
    fig = Figure(figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(fig.subplots(1, len(panels)), panels):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in series:
                ax.plot(epochs, series[prefix + key], style, marker="o", label="validation" if prefix else "train")
        if key == "learning_rate":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    save(fig, path)
    return True


def run_curves(logs: dict[str, object], path: str | Path, best: dict[str, int] | None = None) -> Figure:
    """Validation mean IoU and loss per epoch of several runs on one plot, a line per run and a
    legend naming the runs; a star on each run's best epoch (`best`, by name). `logs` maps a run's
    name to its log.csv as read (columns epoch, val_mean_iou, val_loss; a pandas DataFrame or a
    dict of arrays). Returns the saved Figure."""
    panels = (("val_mean_iou", "validation mean IoU"), ("val_loss", "validation loss"))
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, len(panels))
    colours = matplotlib.colormaps["tab10"]
    for k, (name, log) in enumerate(logs.items()):
        epochs = np.asarray(log["epoch"])
        for ax, (key, _) in zip(axes, panels):
            if key not in log:
                continue
            values = np.asarray(log[key], dtype=np.float64)
            ax.plot(epochs, values, marker="o", markersize=3, color=colours(k % 10), label=name)
            if best and name in best and best[name] in epochs:
                at = int(np.flatnonzero(epochs == best[name])[0])
                ax.plot(epochs[at], values[at], marker="*", markersize=14, color=colours(k % 10),
                        markeredgecolor="black", linestyle="none")
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title + (" (star: best epoch)" if best else ""))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    axes[0].legend(title="run", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def navigation_figure(examples: list[tuple[np.ndarray, np.ndarray, dict]], path: str | Path,
                      classes: ClassTable | None = None, profile: str | None = None,
                      stop_threshold: float = 0.5) -> Figure:
    """Rows of input / prediction / cost map / sector costs with the chosen heading; returns the saved Figure.

    Examples are (image (H, W, 3) in [0, 255], prediction (H, W), navigation.navigate's result,
    which holds the cost map). The cost map shows the near field the planner reads (below the
    dashed line), its strips and an arrow to the chosen one; the bar chart the strips' costs,
    the chosen one outlined, and the stop threshold. A legend names the predicted classes.
    """
    classes = classes or ClassTable.voc()
    rows = max(len(examples), 1)
    fig = Figure(figsize=(13, 3 * rows))
    axes = fig.subplots(rows, 4, squeeze=False)
    for row, (image, pred, result) in zip(axes, examples):
        cost, costs, heading = result["cost_map"], np.asarray(result["sector_costs"]), result["heading"]
        height, width = cost.shape
        row[0].imshow(np.clip(image, 0, 255).astype(np.uint8))
        row[0].set_title("input")
        row[1].imshow(classes.colourize(pred))
        row[1].set_title("prediction")
        im = row[2].imshow(cost, cmap="RdYlGn_r", vmin=0, vmax=1)
        edges = navigation.strip_edges(width, len(costs)) - 0.5  # the strips plan() costed, pixel borders
        row[2].axhline(height // 2 - 0.5, color="white", linestyle="--", linewidth=1)
        row[2].vlines(edges[1:-1], height // 2 - 0.5, height - 0.5, colors="white", linewidth=0.8)
        if not result["stop"]:
            target = (edges[heading] + edges[heading + 1]) / 2
            row[2].annotate("", xy=(target, height * 0.55), xytext=(width / 2, height - 1),
                            arrowprops={"arrowstyle": "-|>", "color": "white", "linewidth": 2})
        row[2].set_title(f"cost map ({profile})" if profile else "cost map")
        fig.colorbar(im, ax=row[2], fraction=0.046)
        bars = row[3].bar(range(len(costs)), costs, color=matplotlib.colormaps["RdYlGn_r"](np.clip(costs, 0, 1)),
                          edgecolor="black")
        if not result["stop"]:  # outlined, and an arrow that shows even on a zero-cost bar
            bars[heading].set_edgecolor("blue")
            bars[heading].set_linewidth(3)
            row[3].annotate("heading", xy=(heading, costs[heading] + 0.02), ha="center", color="blue",
                            xytext=(heading, min(costs[heading] + 0.3, 0.92)),
                            arrowprops={"arrowstyle": "-|>", "color": "blue"})
        row[3].axhline(stop_threshold, color="red", linestyle="--", linewidth=1, label="stop threshold")
        row[3].set_ylim(0, 1)
        row[3].set_xticks(range(len(costs)))
        row[3].set_xlabel("sector (left to right)")
        row[3].set_title("STOP" if result["stop"] else f"heading: sector {heading}",
                         color="red" if result["stop"] else "black")
        row[3].legend(loc="upper right", fontsize=7)
        for ax in row[:3]:
            ax.axis("off")
    fig.tight_layout()
    class_legend(fig, classes, [pred for _, pred, _ in examples], columns=8)
    return save(fig, path)


def ground_figure(image: np.ndarray, pred: np.ndarray, result: dict, navigator, path: str | Path,
                  classes: ClassTable | None = None) -> Figure:
    """Input (with the chosen arc on the ground), prediction, cost map and the bird's-eye grid
    beside them, and a legend of the predicted classes; returns the saved Figure.

    `result` is ground.GroundNavigator.navigate's (it holds the cost map and the cells) and
    `navigator` the GroundNavigator. The grid is drawn forward up, left on the left, in metres:
    cell costs green (free) to red (blocked), unknown grey, every arc of the fan (blocked ones
    dashed red), the chosen one thick blue.
    """
    from kit import ground  # here: ground's planner is not needed for the other figures

    classes = classes or ClassTable.voc()
    grid, planner = navigator.grid, navigator.planner
    height, width = result["cost_map"].shape
    fig = Figure(figsize=(15, 3.6))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1.2, 1.1]})
    axes[0].imshow(np.clip(image, 0, 255).astype(np.uint8))
    axes[1].imshow(classes.colourize(pred))
    im = axes[2].imshow(result["cost_map"], cmap="RdYlGn_r", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    horizon = navigator.camera.horizon_row(width, height)
    if 0 <= horizon < height:
        axes[2].axhline(horizon, color="white", linestyle="--", linewidth=1)
    cells = np.ma.masked_invalid(np.asarray(result["cells"]).T[::-1, ::-1])  # forward up, +y (left) on the left
    cmap = matplotlib.colormaps["RdYlGn_r"].with_extremes(bad="0.6")
    y0, x0 = grid.origin[1], grid.origin[0]
    rows, cols = grid.shape
    extent = (y0 + rows * grid.cell, y0, x0, x0 + cols * grid.cell)  # left = +y, as seen from the vehicle
    axes[3].imshow(cells, cmap=cmap, vmin=0, vmax=1, extent=extent, interpolation="nearest")
    for i, (k, length) in enumerate(zip(planner.curvatures, planner.lengths)):
        arc = ground.arc_points(k, length, grid.cell)
        blocked = result["arc_costs"][i] > planner.profile.max_cost
        axes[3].plot(arc[:, 1], arc[:, 0], color="red" if blocked else "white", linewidth=0.7,
                     linestyle="--" if blocked else "-")
    if not result["stop"]:
        arc = ground.arc_points(result["curvature"], planner.lengths[result["arc"]], grid.cell)
        axes[3].plot(arc[:, 1], arc[:, 0], color="blue", linewidth=3)
        u, v = navigator.camera.ground_to_pixel(arc[:, 0], arc[:, 1], width, height)
        axes[0].plot(u, v, color="white", linewidth=2)
    axes[3].set_xlabel("y (m, left +)")
    axes[3].set_ylabel("x (m, forward)")
    title = "STOP: no free arc" if result["stop"] else \
        f"curvature {result['curvature']:+.2f} /m, heading {result['heading_deg']:+.0f} deg"
    axes[3].set_title(title, color="red" if result["stop"] else "black")
    for ax, name in zip(axes[:3], ("input", "prediction", f"cost map ({navigator.profile})")):
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    class_legend(fig, classes, [pred], columns=8)
    return save(fig, path)
