"""Training machinery: distribution strategy, precision, and the run state that makes runs resumable.

A run directory holds:
    config.json          the resolved flags
    log.csv              one row per finished epoch (loss, metrics, val_ versions, learning rate)
    best.keras           the model with the best val_mean_iou so far
    state/last.keras     model and optimizer after the last finished epoch
    state/state.json     epoch, history, best score and callback counters: the commit point
    tensorboard/         TensorBoard logs
Every file except TensorBoard's is written to a temporary name and renamed into place, so a
kill never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

STATE_DIR = "state"
MONITOR = "val_mean_iou"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_model(model: keras.Model, path: str | Path) -> None:
    """`model.save` to a temporary `.keras` name beside `path`, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # Keras wants the .keras suffix
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: all local GPUs if more than one, else the default; mirrored: all local GPUs, or
    every logical CPU when there is no GPU; multiworker: several machines, from TF_CONFIG."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs TF_CONFIG describing the cluster (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and logs (always, outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def set_precision(mixed: bool) -> str:
    """mixed_float16 on GPU, mixed_bfloat16 on CPU, else float32; returns the policy name."""
    if not mixed:
        policy = "float32"
    else:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


class RunState(keras.callbacks.Callback):
    """Checkpoints, logs and resumes a run; stops on a non-finite loss without saving it.

    At the end of each finished epoch, in this order: best.keras if `val_mean_iou` improved,
    state/last.keras, state/state.json (the commit point), log.csv. To resume, `load` reads
    the saved state (epoch, history, best score) and `on_train_begin` puts back the learning
    rate and the counters of the ReduceLROnPlateau and EarlyStopping callbacks it is given.
    """

    def __init__(self, run_dir: str | Path, reduce_lr: keras.callbacks.ReduceLROnPlateau,
                 early_stop: keras.callbacks.EarlyStopping, write: bool = True):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.reduce_lr, self.early_stop = reduce_lr, early_stop
        self.write = write  # False on non-chief workers
        self.history: list[dict] = []
        self.best = -math.inf
        self.diverged: str | None = None
        self._resume: dict | None = None
        self._epoch, self._epoch_start, self._lr = 0, 0.0, 0.0

    # -- paths -----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_DIR / "state.json"

    @property
    def last_path(self) -> Path:
        return self.run_dir / STATE_DIR / "last.keras"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.keras"

    def load(self) -> dict | None:
        """The saved state of an interrupted run in this directory, or None."""
        if not self.state_path.is_file():
            return None
        state = json.loads(self.state_path.read_text())
        self.history, self.best = state["history"], state["best"]
        self._resume = state
        return state

    # -- callback hooks --------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        # Runs after the other callbacks reset themselves (this one is last in the list).
        if self._resume:
            for cb, key in ((self.reduce_lr, "reduce_lr"), (self.early_stop, "early_stop")):
                for attr, value in self._resume["callbacks"][key].items():
                    setattr(cb, attr, value)
            self.model.optimizer.learning_rate.assign(self._resume["learning_rate"])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._epoch_start = epoch, time.time()
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = f"non-finite loss {float(loss)} at batch {batch + 1} of epoch {self._epoch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.diverged is None:
            bad = [k for k, v in logs.items() if isinstance(v, (int, float)) and not math.isfinite(v) and "loss" in k]
            if bad:
                self.diverged = f"non-finite {bad[0]} at the end of epoch {epoch + 1}"
        if self.diverged:
            self.model.stop_training = True
            return  # the last good state stays as it is
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items() if k != "learning_rate"},
               "learning_rate": self._lr, "seconds": round(time.time() - self._epoch_start, 1)}
        self.history.append(row)
        score = logs.get(MONITOR)
        if score is not None and score > self.best:
            self.best = float(score)
            if self.write:
                atomic_save_model(self.model, self.best_path)
        if not self.write:
            return
        atomic_save_model(self.model, self.last_path)
        state = {"epoch": epoch, "history": self.history, "best": self.best,
                 "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                 "finished": bool(self.model.stop_training),
                 "callbacks": {"reduce_lr": {"wait": self.reduce_lr.wait, "best": self.reduce_lr.best,
                                             "cooldown_counter": self.reduce_lr.cooldown_counter},
                               "early_stop": {"wait": self.early_stop.wait, "best": self.early_stop.best,
                                              "best_epoch": self.early_stop.best_epoch}}}
        atomic_write_text(self.state_path, json.dumps(state, indent=2, default=float))
        write_csv_log(self.run_dir / "log.csv", self.history)


def write_csv_log(path: Path, rows: list[dict]) -> None:
    """The whole log, rewritten atomically (it is small): one row per finished epoch."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class EpochSummary(keras.callbacks.Callback):
    """One line per epoch: the headline numbers, the learning rate and the time taken."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        keys = ("loss", "mean_iou", "val_loss", "val_pixel_accuracy", "val_mean_accuracy", "val_mean_iou")
        parts = [f"{k} {logs[k]:.4f}" for k in keys if k in logs]
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        print(f"epoch {epoch + 1}/{self.epochs}  " + "  ".join(parts) + f"  lr {lr:.1e}  {time.time() - self._start:.0f}s",
              flush=True)
