"""Training on several machines (`--strategy multiworker`): the cluster from TF_CONFIG, and the
training loop that replaces Keras's `fit` there.

    # the same command on every machine; only TF_CONFIG's task index differs (docs/training.md, "Several machines")
    TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:23456", "10.0.0.2:23456"]}, "task": {"type": "worker", "index": 0}}' \
        python train.py --strategy multiworker --worker-timeout 300

Keras 3's `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585: PerReplica
values, then "Invalid reduction dimension 0"), so `fit` here is a custom loop: the model and
optimizer train.py compiled under the strategy's scope, a `tf.function` step run by
`strategy.run` on each worker's slice of the global batch, gradients summed across workers by
the optimizer (its `apply` inside the replica function), and every logged number reduced across
workers. The loop drives the same Keras callbacks as `fit` (RunState, EpochProgress,
IterationLimit, TensorBoard) with the same `logs` keys, so checkpoints, log.csv, resume and the
plateau / early-stopping decisions work as in a single-process run. Each decision is taken from
all-reduced values, which are identical on every worker, so all workers stop together.

Validation is distributed too: each worker scores its share of every validation batch and the
confusion matrices (metrics.confusion_matrix_update, the one implementation) and loss sums are
added across workers.

Batch-norm moving statistics are per worker while an epoch runs (plain batch norm, not
synchronized); they are averaged across workers at the end of each epoch, before validation
and the checkpoint, so every worker ends the epoch with the same weights.

A worker that never comes up fails the others after --worker-timeout seconds (`wait_for_peers`,
before TensorFlow's own rendezvous, which waits an hour); one that disappears mid-run fails
them at the next exchange, after the same timeout (the collectives' `timeout_seconds`).
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kit import config
import metrics
from kit.errors import KitError

TF_CONFIG = "TF_CONFIG"


class ClusterError(KitError):
    """A cluster that cannot train: TF_CONFIG missing or wrong, or a worker that does not answer."""


def cluster_from_env() -> tuple[dict[str, list[str]], str, int]:
    """(cluster {job: [host:port, ...]}, this task's type, index) from TF_CONFIG, or ClusterError."""
    text = os.environ.get(TF_CONFIG)
    if not text:
        raise ClusterError("--strategy multiworker needs TF_CONFIG describing the cluster and this machine's place "
                           "in it (docs/training.md, \"Several machines\")")
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = task["type"], int(task["index"])
        addresses = cluster[kind]
        if not 0 <= index < len(addresses):
            raise ValueError(f"task index {index} is not in the {len(addresses)} {kind} address(es)")
        if not isinstance(task["index"], int):
            raise ValueError(f"task index {task['index']!r} is not a whole number")
        for job in cluster.values():
            for address in job:
                host, port = _host_port(address)
                if not host or not 0 < port < 65536:
                    raise ValueError(f"{address!r} is not host:port with a port in 1..65535")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise ClusterError(f"TF_CONFIG is not a cluster description ({type(err).__name__}: {err}); expected e.g. "
                           '{"cluster": {"worker": ["host1:23456", "host2:23456"]}, "task": {"type": "worker", '
                           '"index": 0}}') from None
    return cluster, kind, index


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def wait_for_peers(cluster: dict[str, list[str]], kind: str, index: int, timeout: float) -> None:
    """Return once every other task's port accepts connections; ClusterError after `timeout` s.

    TensorFlow's own rendezvous (inside the strategy's constructor) waits an hour for a missing
    worker and cannot be interrupted by SIGTERM, so the cluster is checked first. This task
    listens on its own port meanwhile (without accepting), so the others see it; the listener
    closes before TensorFlow's server takes the port, and peers still checking retry until
    that server answers.
    """
    host, port = _host_port(cluster[kind][index])
    try:
        listener = socket.create_server(("", port), backlog=64)
    except OSError as err:
        raise ClusterError(f"cannot listen on port {port} ({cluster[kind][index]} in TF_CONFIG, this task): "
                           f"{err.strerror or err}; is another worker already using it?") from None
    waiting = {(job, i): _host_port(a) for job, addresses in cluster.items() for i, a in enumerate(addresses)
               if (job, i) != (kind, index)}
    deadline = time.monotonic() + timeout
    try:
        while waiting:
            for name, address in list(waiting.items()):
                try:
                    socket.create_connection(address, timeout=2).close()
                    del waiting[name]
                except OSError:
                    pass
            if not waiting:
                break
            if time.monotonic() >= deadline:
                missing = ", ".join(f"{job} {i} ({h}:{p})" for (job, i), (h, p) in sorted(waiting.items()))
                raise ClusterError(f"{missing} did not answer within {timeout:g} s (--worker-timeout): start the same "
                                   f"train.py command there with its own TF_CONFIG task index, or check the address "
                                   f"and firewall")
            time.sleep(0.5)
    finally:
        listener.close()


def multiworker_strategy(timeout: float) -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy for TF_CONFIG's cluster, once every worker answers (`wait_for_peers`).

    Must run before anything lists devices or creates a tensor ("Collective ops must be
    configured at program startup"). Collectives time out after `timeout` s, so a worker that
    disappears mid-run fails the others with an error instead of a hang.
    """
    if not timeout > 0:
        raise config.ConfigError(f"--worker-timeout must be positive, got {timeout:g}")
    cluster, kind, index = cluster_from_env()
    wait_for_peers(cluster, kind, index, timeout)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # TensorFlow's preemption notifier takes SIGTERM over and only records it, so a worker told
    # to stop would keep waiting for its peers. Every file of a run is written atomically
    # (kit/training.py), so ending at once is safe.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


def agree(strategy, value: int, what: str) -> None:
    """ClusterError unless every worker passes the same integer `value` (e.g. the epoch it resumes after)."""
    values = strategy.gather(strategy.run(lambda: tf.constant([value], tf.int64)), axis=0).numpy()
    low, high = int(values.min()), int(values.max())
    if high != low:
        raise ClusterError(f"the workers disagree on {what} (from {low} to {high}); every worker reads the run "
                           f"directory to resume, so put --run-dir on storage all machines share, or pass --fresh")


def _distribute(strategy, dataset: tf.data.Dataset):
    """Each worker takes its share of every global batch (the pipeline's files are not split by
    worker: each reads the same shuffled stream and keeps its slice)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _scores(cm: np.ndarray, prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in metrics.scores(cm).items() if k in metrics.SCORES}


def fit(strategy, model: keras.Model, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, *, epochs: int,
        initial_epoch: int, steps_per_epoch: int, callbacks: list, num_classes: int) -> None:
    """`model.fit(train_ds, validation_data=val_ds, ...)` for MultiWorkerMirroredStrategy.

    `model` was built and compiled (loss, optimizer) under `strategy.scope()`. `logs` carry
    Keras's keys: loss, pixel_accuracy, mean_accuracy, mean_iou and their val_ versions.
    Raises ClusterError when a worker stops answering.
    """
    loss_fn, optimizer = model.loss, model.optimizer
    replicas = strategy.num_replicas_in_sync
    stats = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

    def train_replica(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_fn(labels, logits)
            if model.losses:
                loss = loss + ops.sum(model.losses)
            # The loss is already a mean over this replica's batch (pixel-normalised CE, Dice over
            # the batch): not a sum of per-image terms that tf.nn.compute_average_loss could divide
            # by the global batch. Replicas hold equal shares, so the mean over the global batch is
            # the mean of the replicas' means; the optimizer sums gradients across replicas.
            loss = loss / replicas
            scaled = optimizer.scale_loss(loss)  # mixed_float16's loss scaling; identity otherwise
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss, ops.cast(metrics.confusion_matrix_update(labels, logits, num_classes), "float64")

    @tf.function
    def train_step(batch):
        loss, cm = strategy.run(train_replica, args=tuple(batch))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, cm, axis=None))

    def val_replica(images, labels):
        logits = model(images, training=False)
        n = ops.cast(ops.shape(images)[0], "float32")
        # A share can be empty at the end of the set; weight each batch's loss by its images, as
        # Keras's val_loss does.
        loss = ops.where(n > 0, ops.cast(loss_fn(labels, logits), "float32") * n, 0.0)
        return loss, n, ops.cast(metrics.confusion_matrix_update(labels, logits, num_classes), "float64")

    @tf.function
    def val_step(batch):
        values = strategy.run(val_replica, args=tuple(batch))
        return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in values)

    @tf.function
    def sync_stats():
        local = strategy.run(lambda: [tf.identity(v.value) for v in stats])
        for variable, value in zip(stats, local):
            variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

    if not optimizer.built:
        # Its slots now, eagerly: created inside the first traced step (each slot's initial value
        # is broadcast from worker 0), they made that step take 114 s instead of 64 s on 2 busy cores.
        with strategy.scope():
            optimizer.build(model.trainable_variables)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=steps_per_epoch,
                                                 verbose=0)
    train_iter = iter(_distribute(strategy, train_ds))
    val_dist = _distribute(strategy, val_ds)
    model.stop_training = False
    try:
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            cm, total, done = np.zeros((num_classes, num_classes)), 0.0, 0
            for step in range(steps_per_epoch):
                loss, step_cm = train_step(next(train_iter))
                total, done, cm = total + float(loss), done + 1, cm + step_cm.numpy()
                callback_list.on_train_batch_end(step, {"loss": float(loss)})
                if model.stop_training:
                    break
            if stats:
                sync_stats()
            logs = {"loss": total / max(done, 1), **_scores(cm)}
            val_cm, val_loss, seen = np.zeros((num_classes, num_classes)), 0.0, 0.0
            for batch in val_dist:
                loss_sum, n, batch_cm = val_step(batch)
                val_loss, seen, val_cm = val_loss + float(loss_sum), seen + float(n), val_cm + batch_cm.numpy()
            logs.update({"val_loss": val_loss / seen if seen else math.nan, **_scores(val_cm, "val_")})
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        callback_list.on_train_end()
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.CancelledError,
            tf.errors.AbortedError) as err:
        raise ClusterError(f"a worker stopped answering during training ({type(err).__name__}); "
                           f"run the same command on every machine again to resume from the last "
                           f"finished epoch") from None
