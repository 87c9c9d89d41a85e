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
import shutil
import time
from pathlib import Path

import keras
import tensorflow as tf
from keras import ops
from tqdm import tqdm

from kit import atomic
from kit import config
from kit import distributed
from kit.errors import KitError

STATE_DIR = "state"
MONITOR = config.MONITOR


def atomic_save_model(model: keras.Model, path: str | Path) -> None:
    """`model.save` to a temporary `.keras` name beside `path`, then renamed into place."""
    with atomic.file(path) as tmp:
        model.save(tmp)


class RunError(KitError):
    """A run directory that cannot be used as asked: in use, not a run, or not resumable."""


# Everything train.py, evaluate.py and export.py write into a run directory: what --fresh removes.
RUN_FILES = (config.RUN_CONFIG, config.RUN_LOG, config.RUN_BEST_MODEL, STATE_DIR, "tensorboard", config.RUN_METRICS,
             "per_class_iou.md", "confusion_matrix.png", "predictions.png", "navigation.png", "training_curves.png",
             "export")
LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory while a train.py process uses it.

    The operating system releases it when the process ends, however it ends (flock), so a
    killed run never leaves a stale lock. A second process gets a RunError naming the holder.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._file, self._created, self._new_lock = None, False, False

    def __enter__(self):
        import fcntl  # POSIX; TensorFlow's supported platforms for training are Linux, macOS and WSL

        self._created = not self.path.parent.exists()
        self._new_lock = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunError(f"{self.path.parent} is in use by train.py (pid {holder}); wait for it to finish, "
                           f"or pass another --run-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            # A run refused before it wrote anything (bad data, bad settings) leaves nothing it
            # made: not its lock in the user's folder, not the folder if it made that too.
            folder = self.path.parent
            if self._new_lock and not any((folder / name).exists() for name in RUN_FILES):
                self.path.unlink()
                if self._created and not any(folder.iterdir()):
                    folder.rmdir()
            self._file.close()  # closing releases the lock
            self._file = None


def discard_run(run_dir: Path) -> list[str]:
    """--fresh: remove a run's own files (RUN_FILES) from `run_dir`, nothing else; return their names.

    A folder without a run of ours (no config.json or state/) is a RunError: --fresh is not a
    way to empty an arbitrary folder (`--run-dir eval --fresh` must not wipe every run in eval/).
    """
    if not run_dir.exists() or {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
        return []  # nothing to discard: a new run (its lock, taken just before, is all there is)
    if not ((run_dir / config.RUN_CONFIG).is_file() or (run_dir / STATE_DIR).is_dir()):
        raise RunError(f"--fresh: {run_dir} holds no train.py run (no config.json or {STATE_DIR}/), so nothing is "
                       f"deleted; give --run-dir the run's own folder")
    removed = []
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def ensure_space(folder: Path, needed: int, what: str) -> None:
    """RunError before writing `what` if `folder`'s disk has less than `needed` bytes free (+10%)."""
    free = shutil.disk_usage(folder).free
    if free < needed * 1.1:
        raise RunError(f"not enough disk space for {what} in {folder}: {free / 2 ** 20:,.0f} MB free, about "
                       f"{needed / 2 ** 20:,.0f} MB needed; free some space and run the same command again to resume")


def load_checkpoint(path: Path) -> keras.Model:
    """state/last.keras with its optimizer, or a RunError saying the run cannot resume from it."""
    try:
        return keras.models.load_model(path)
    except Exception as err:  # truncated or corrupt: Keras raises several types
        raise RunError(f"{path} cannot be loaded ({type(err).__name__}: {str(err)[:200]}), so the run cannot "
                       f"resume; pass --fresh to start over, or another --run-dir") from err


def make_strategy(name: str, worker_timeout: float = 300.0) -> tf.distribute.Strategy:
    """auto: all local GPUs if more than one, else the default; mirrored: all local GPUs, or
    every logical CPU when there is no GPU; multiworker: several machines, from TF_CONFIG
    (kit/distributed.py; a worker that does not answer within `worker_timeout` s is an error).

    Call it before anything lists devices or creates a tensor: a multi-worker strategy has to
    configure TensorFlow's collective ops before TensorFlow initialises its devices.
    """
    if name == "multiworker":  # first, before list_logical_devices initialises the devices
        return distributed.multiworker_strategy(worker_timeout)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
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


OPTIMIZERS = config.TRAIN["optimizer"].choices


@keras.saving.register_keras_serializable(package="deeplab")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate per optimizer step: linear warm-up, then poly, cosine or constant.

    step < warmup_steps:  base_lr * (step + 1) / warmup_steps
    then, with t = (step - warmup_steps) / (total_steps - warmup_steps) clipped to [0, 1]:
        poly      end_lr + (base_lr - end_lr) * (1 - t) ** power     (DeepLab's "poly", power 0.9)
        cosine    end_lr + (base_lr - end_lr) * (1 + cos(pi t)) / 2
        constant  base_lr
    The step is the optimizer's iteration count, which a checkpoint saves, so a resumed run
    continues the schedule where it stopped.
    """

    def __init__(self, base_lr: float, total_steps: int, kind: str = "poly", power: float = 0.9,
                 warmup_steps: int = 0, end_lr: float = 0.0):
        if kind not in ("poly", "cosine", "constant"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.base_lr, self.total_steps, self.kind = float(base_lr), int(total_steps), kind
        self.power, self.warmup_steps, self.end_lr = float(power), int(warmup_steps), float(end_lr)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.base_lr * (step + 1.0) / max(self.warmup_steps, 1)
        t = ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        if self.kind == "poly":
            decayed = self.end_lr + (self.base_lr - self.end_lr) * (1.0 - t) ** self.power
        elif self.kind == "cosine":
            decayed = self.end_lr + (self.base_lr - self.end_lr) * 0.5 * (1.0 + ops.cos(math.pi * t))
        else:
            decayed = self.base_lr + 0.0 * t
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "kind": self.kind, "power": self.power,
                "warmup_steps": self.warmup_steps, "end_lr": self.end_lr}


def decays(variable) -> bool:
    """Whether weight decay applies to a variable: conv and dense kernels only, never batch-norm
    parameters (gamma, beta) or biases, as the DeepLab references train."""
    return variable.name.endswith("kernel")


class _WeightDecay:
    """Weight decay on kernels only (`decays`), coupled (L2) or decoupled, saved with the optimizer.

    coupled: wd * w is added to the gradient before the optimizer's update, which is what
        PyTorch's SGD and Adam do with `weight_decay` (so it passes through the momentum).
    decoupled: w -= lr * wd * w before the update (AdamW, Loshchilov & Hutter).
    """

    def __init__(self, *args, decay: float = 0.0, decoupled: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.decay, self.decoupled = float(decay), bool(decoupled)

    def apply(self, grads, trainable_variables=None):
        variables = trainable_variables if trainable_variables is not None else self._trainable_variables
        if self.decay and self.decoupled:
            lr = ops.cast(self.learning_rate, "float32")
            for variable in variables:
                if decays(variable):
                    variable.assign(variable - ops.cast(lr * self.decay, variable.dtype) * variable)
        elif self.decay:
            grads = [g + self.decay * v if g is not None and decays(v) else g for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "decay": self.decay, "decoupled": self.decoupled}


def _fusable(gradient) -> bool:
    """Whether a variable's update can run as one fused TensorFlow kernel: dense gradients only."""
    return not isinstance(gradient, tf.IndexedSlices)


# Keras 3 updates each variable with separate elementwise ops (Adam: about ten passes over the
# variable, its moments and the gradient). TensorFlow's fused training kernels do the same maths
# in one pass: for DeepLab v3's 40 M parameters on a Xeon with AMX the Adam update took 0.15 s of
# a 1.8 s bfloat16 training step. The formulas are Keras's own (docstrings below), so results
# match to float rounding (tests/test_training.py compares them).

@keras.saving.register_keras_serializable(package="deeplab")
class DecaySGD(_WeightDecay, keras.optimizers.SGD):
    """SGD with momentum and weight decay on kernels only.

    With momentum and without Nesterov, each update is ResourceApplyKerasMomentum:
    m = momentum m - lr g; w += m, as keras.optimizers.SGD.
    """

    def update_step(self, gradient, variable, learning_rate):
        if not self.momentum or self.nesterov or not _fusable(gradient):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        m = self.momentums[self._get_variable_index(variable)]
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=m.handle, lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype), use_locking=False, use_nesterov=False)


@keras.saving.register_keras_serializable(package="deeplab")
class DecayAdam(_WeightDecay, keras.optimizers.Adam):
    """Adam (coupled L2) or AdamW (decoupled) with weight decay on kernels only.

    Without AMSGrad, each update is ResourceApplyAdam: m += (1 - b1)(g - m), v += (1 - b2)(g^2 - v),
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), as keras.optimizers.Adam.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not _fusable(gradient):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)

        def scalar(value):
            return tf.cast(value, dtype)

        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(scalar(self.beta_1), step), beta2_power=tf.pow(scalar(self.beta_2), step),
            lr=scalar(learning_rate), beta1=scalar(self.beta_1), beta2=scalar(self.beta_2),
            epsilon=scalar(self.epsilon), grad=tf.cast(gradient, dtype), use_locking=False, use_nesterov=False)


def make_optimizer(name: str, learning_rate, momentum: float = 0.9, weight_decay: float = 0.0):
    """adam and sgd take weight decay as L2 (PyTorch's meaning of the same names), adamw decoupled."""
    if name == "sgd":
        return DecaySGD(learning_rate, momentum=momentum, decay=weight_decay)
    if name in ("adam", "adamw"):
        return DecayAdam(learning_rate, decay=weight_decay, decoupled=name == "adamw")
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def learning_rate(schedule: str, base_lr: float, total_steps: int, power: float = 0.9, warmup_steps: int = 0):
    """A float for "plateau" (ReduceLROnPlateau changes it between epochs), else a WarmupDecay."""
    config.check_warmup(schedule, warmup_steps)
    if schedule == "plateau":
        return float(base_lr)
    return WarmupDecay(base_lr, total_steps, schedule, power, warmup_steps)


def extend_schedule(optimizer, total_steps: int) -> str | None:
    """Make a restored WarmupDecay end at `total_steps`; a message saying so when it changed.

    A checkpoint keeps the schedule it was built with: a run continued with more --epochs or
    --iterations would go on past the old end at t = 1, where poly and cosine give the end
    rate, 0. The rate is recomputed for the new length from the step reached (so it rises
    again, to where a run planned that long from the start would be).
    """
    # Keras 3 keeps the schedule object here; `optimizer.learning_rate` only gives its value.
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, WarmupDecay) or schedule.total_steps == total_steps:
        return None
    old = schedule.total_steps
    optimizer.learning_rate = WarmupDecay(**{**schedule.get_config(), "total_steps": int(total_steps)})
    step = int(keras.ops.convert_to_numpy(optimizer.iterations))
    rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    return (f"the {schedule.kind} schedule now runs over {total_steps} steps (it was {old}): at step {step} "
            f"the learning rate is {rate:.2e}")


def freeze_batch_norm(model: keras.Model) -> int:
    """Put every batch norm (ASPP's included) in inference mode with fixed parameters, for
    fine-tuning with batches too small for batch statistics; returns how many."""
    norms = [layer for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.trainable = False
    return len(norms)


class IterationLimit(keras.callbacks.Callback):
    """Stop training once the optimizer has taken `iterations` steps (counting resumed ones)."""

    def __init__(self, iterations: int):
        super().__init__()
        self.iterations = int(iterations)

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) >= self.iterations:
            self.model.stop_training = True


class Plateau:
    """ReduceLROnPlateau and EarlyStopping on one monitored value, as state RunState owns and saves.

    After an epoch without improvement of `monitor` (lower is better), each wait grows by one;
    at `lr_patience` the learning rate is multiplied by `factor` (not below `min_lr`) and that
    wait restarts (None: the rate is a schedule's, left alone); at `stop_patience` training
    stops (None: never). RunState calls `update` at the end of every epoch and saves `state()`
    in each checkpoint, so a resumed run decides exactly as an uninterrupted one, whatever
    order callbacks are listed in.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, lr_patience: int | None = 3,
                 stop_patience: int | None = 6, min_lr: float = 1e-8):
        self.monitor, self.factor, self.min_lr = monitor, factor, min_lr
        self.lr_patience, self.stop_patience = lr_patience, stop_patience
        self.best, self.best_epoch, self.lr_wait, self.stop_wait = math.inf, -1, 0, 0
        self.stopped: str | None = None

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "lr_wait": self.lr_wait,
                "stop_wait": self.stop_wait, "stopped": self.stopped}

    def restore(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.lr_wait, self.stop_wait, self.stopped = state["lr_wait"], state["stop_wait"], state.get("stopped")

    def update(self, epoch: int, logs: dict, optimizer) -> bool:
        """Account for a finished epoch; may lower the optimizer's rate. Returns whether to stop."""
        current = logs.get(self.monitor)
        if current is None or not math.isfinite(current):
            return False
        if current < self.best:
            self.best, self.best_epoch, self.lr_wait, self.stop_wait = float(current), epoch, 0, 0
            return False
        self.lr_wait += 1
        self.stop_wait += 1
        if self.lr_patience and self.lr_wait >= self.lr_patience:
            lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            optimizer.learning_rate.assign(max(lr * self.factor, self.min_lr))
            self.lr_wait = 0
        if self.stop_patience and self.stop_wait >= self.stop_patience:
            self.stopped = (f"{self.monitor} did not improve for {self.stop_wait} epochs (best {self.best:.4f} at "
                            f"epoch {self.best_epoch + 1})")
            return True
        return False


class RunState(keras.callbacks.Callback):
    """Checkpoints, logs and resumes a run; stops on a non-finite (or absurd) loss without saving it.

    At the end of each finished epoch, in this order: best.keras (`best_model`, the
    single-output model) if `val_mean_iou` improved, state/last.keras (the model being trained,
    with its optimizer), log.csv, then state/state.json, the commit point (epoch, history, best
    score, the Plateau callback's state). To resume, `load` reads the state and
    `on_train_begin` hands the Plateau callback its counters back; the learning rate and
    schedule position come back with last.keras's optimizer.
    """

    # A loss this large is divergence even when it is finite (CE + Dice starts near 4).
    ABSURD_LOSS = 1e6

    def __init__(self, run_dir: str | Path, plateau: Plateau, write: bool = True, best_model=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.plateau = plateau
        self.write = write  # False on non-chief workers
        self.best_model = best_model  # None: the model being trained
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
        return self.run_dir / config.RUN_BEST_MODEL

    def load(self) -> dict | None:
        """The saved state of an interrupted run in this directory, or None for a new run.

        Checkpoints without a readable state.json (deleted, truncated) are a RunError: starting
        over silently would overwrite best.keras, the log and the config.
        """
        if not self.state_path.is_file():
            left = [p.name for p in (self.last_path, self.best_path, self.run_dir / config.RUN_LOG) if p.exists()]
            if left:
                raise RunError(f"{self.run_dir} holds {', '.join(left)} but no {STATE_DIR}/state.json, so the run "
                               f"cannot be resumed safely; pass --fresh to start over (it deletes the run's files), "
                               f"or another --run-dir")
            return None
        try:
            state = json.loads(self.state_path.read_text())
            missing = {"epoch", "history", "best", "finished", "plateau"} - set(state)
            if missing:
                raise ValueError(f"no {', '.join(sorted(missing))}")
            self.history, self.best = state["history"], state["best"]
            if not self.last_path.is_file():
                raise ValueError(f"{self.last_path.name} is missing")
        except (ValueError, KeyError, TypeError) as err:
            raise RunError(f"{self.state_path} cannot be used to resume ({type(err).__name__}: {err}); pass --fresh "
                           f"to start over, or another --run-dir") from None
        self._resume = state
        return state

    def clean(self) -> list[Path]:
        """Remove the temporary checkpoints of killed runs (a .keras each, hundreds of MB)."""
        return atomic.clean_leftovers(self.run_dir) + atomic.clean_leftovers(self.run_dir / STATE_DIR)

    def _save_model(self, model, path: Path) -> None:
        # Room for the new file beside the old one: the previous one's size, or 4 bytes a weight
        # (3x with the optimizer's slots) for the first.
        previous = path.stat().st_size if path.exists() else 0
        estimate = previous or 4 * model.count_params() * (3 if getattr(model, "optimizer", None) else 1)
        ensure_space(path.parent if path.parent.exists() else self.run_dir, estimate, path.name)
        atomic_save_model(model, path)

    # -- callback hooks --------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self._resume:
            self.plateau.restore(self._resume["plateau"])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._epoch_start = epoch, time.time()
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _bad(self, value) -> bool:
        return not math.isfinite(float(value)) or abs(float(value)) > self.ABSURD_LOSS

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and self._bad(loss):
            self.diverged = f"loss {float(loss):.4g} at batch {batch + 1} of epoch {self._epoch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.diverged is None:
            bad = [k for k, v in logs.items() if isinstance(v, (int, float)) and "loss" in k and self._bad(v)]
            if bad:
                self.diverged = f"{bad[0]} {logs[bad[0]]:.4g} at the end of epoch {epoch + 1}"
        if self.diverged:
            self.model.stop_training = True
            return  # the last good state stays as it is
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items() if k != "learning_rate"},
               "learning_rate": self._lr, "seconds": round(time.time() - self._epoch_start, 1)}
        self.history.append(row)
        if self.plateau.update(epoch, logs, self.model.optimizer):
            self.model.stop_training = True
        score = logs.get(MONITOR)
        if score is not None and score > self.best:
            self.best = float(score)
            if self.write:
                self._save_model(self.best_model or self.model, self.best_path)
        if not self.write:
            return
        self._save_model(self.model, self.last_path)
        write_csv_log(self.run_dir / config.RUN_LOG, self.history)
        state = {"epoch": epoch, "history": self.history, "best": self.best,
                 "finished": bool(self.model.stop_training), "plateau": self.plateau.state()}
        atomic.write_text(self.state_path, json.dumps(state, indent=2, default=float))


def write_csv_log(path: Path, rows: list[dict]) -> None:
    """The whole log, rewritten atomically (it is small): one row per finished epoch."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch: a progress bar over its steps that ends with the epoch's numbers.

    On a terminal the bar fills as steps run and is left showing the epoch's validation scores,
    learning rate and time; elsewhere (a log file, CI) only that final line is printed.
    """

    KEYS = ("loss", "mean_iou", "val_loss", "val_pixel_accuracy", "val_mean_accuracy", "val_mean_iou")

    def __init__(self, epochs: int, steps: int):
        super().__init__()
        self.epochs, self.steps = epochs, steps
        self._bar, self._start, self._lr = None, 0.0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()
        # The rate of the epoch's first step, as log.csv records it; read at the epoch's end a
        # schedule has moved on (to 0 at the end of a poly schedule).
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step", leave=True,
                         disable=None, bar_format="{desc} {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} {postfix}")

    def on_train_batch_end(self, batch, logs=None):
        self._bar.update(1)
        if "loss" in (logs or {}) and (batch % 5 == 0 or batch + 1 == self.steps):
            self._bar.set_postfix_str(f"loss {float(logs['loss']):.4f}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        summary = "  ".join(f"{k} {float(logs[k]):.4f}" for k in self.KEYS if k in logs)
        summary += f"  lr {self._lr:.1e}  {time.time() - self._start:.0f}s"
        if self._bar.disable:
            print(f"epoch {epoch + 1}/{self.epochs}  {summary}", flush=True)
        else:
            self._bar.set_postfix_str(summary)
        self._bar.close()
