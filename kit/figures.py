"""Pictures for people: prediction grids, navigation, the confusion matrix and training curves (PNG files)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kit import navigation  # noqa: E402
from kit.data import ClassTable  # noqa: E402


def prediction_grid(examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | Path,
                    classes: ClassTable | None = None) -> None:
    """Rows of input / ground truth / prediction in the data set's class colours; examples are
    (image (H, W, 3) in [0, 255], label (H, W), prediction (H, W))."""
    classes = classes or ClassTable.voc()
    rows = max(len(examples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for row, (image, label, pred) in zip(axes, examples):
        pictures = (np.clip(image, 0, 255).astype(np.uint8), classes.colourize(label), classes.colourize(pred))
        for ax, picture, title in zip(row, pictures, ("input", "ground truth", "prediction")):
            ax.imshow(picture)
            ax.set_title(title)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def confusion_matrix_figure(cm: np.ndarray, path: str | Path, class_names=ClassTable.voc().names) -> None:
    """Row-normalised confusion matrix (each true class sums to 1), classes by name."""
    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(cm)
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names[:n], rotation=90)
    ax.set_yticks(range(n), class_names[:n])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in series:
                ax.plot(epochs, series[prefix + key], style, marker="o", label="validation" if prefix else "train")
        if key == "learning_rate":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def navigation_figure(examples: list[tuple[np.ndarray, np.ndarray, dict]], path: str | Path,
                      classes: ClassTable | None = None, profile: str | None = None,
                      stop_threshold: float = 0.5) -> None:
    """Rows of input / prediction / cost map / sector costs with the chosen heading.

    Examples are (image (H, W, 3) in [0, 255], prediction (H, W), navigation.navigate's result,
    which holds the cost map). The cost map shows the near field the planner reads (below the
    dashed line), its strips and an arrow to the chosen one; the bar chart the strips' costs,
    the chosen one outlined, and the stop threshold.
    """
    classes = classes or ClassTable.voc()
    rows = max(len(examples), 1)
    fig, axes = plt.subplots(rows, 4, figsize=(13, 3 * rows), squeeze=False)
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
        bars = row[3].bar(range(len(costs)), costs, color=plt.get_cmap("RdYlGn_r")(np.clip(costs, 0, 1)),
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
    fig.savefig(path, dpi=80)
    plt.close(fig)


def ground_figure(image: np.ndarray, pred: np.ndarray, result: dict, navigator, path: str | Path,
                  classes: ClassTable | None = None) -> None:
    """Input (with the chosen arc on the ground), prediction, cost map and the bird's-eye grid beside them.

    `result` is ground.GroundNavigator.navigate's (it holds the cost map and the cells) and
    `navigator` the GroundNavigator. The grid is drawn forward up, left on the left, in metres:
    cell costs green (free) to red (blocked), unknown grey, every arc of the fan (blocked ones
    dashed red), the chosen one thick blue.
    """
    from kit import ground  # here: ground's planner is not needed for the other figures

    classes = classes or ClassTable.voc()
    grid, planner = navigator.grid, navigator.planner
    height, width = result["cost_map"].shape
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.2, 1.1]})
    axes[0].imshow(np.clip(image, 0, 255).astype(np.uint8))
    axes[1].imshow(classes.colourize(pred))
    im = axes[2].imshow(result["cost_map"], cmap="RdYlGn_r", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    horizon = navigator.camera.horizon_row(width, height)
    if 0 <= horizon < height:
        axes[2].axhline(horizon, color="white", linestyle="--", linewidth=1)
    cells = np.ma.masked_invalid(np.asarray(result["cells"]).T[::-1, ::-1])  # forward up, +y (left) on the left
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="0.6")
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
    fig.savefig(path, dpi=80)
    plt.close(fig)
