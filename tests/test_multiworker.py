"""`train.py --strategy multiworker`: two worker processes on 127.0.0.1 (TF_CONFIG) train one epoch
to the same weights and resume together, only the chief writes the run directory, and a missing
worker is an error after --worker-timeout instead of a hang."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kit import config
from kit import distributed
import download_data
import losses  # noqa: F401 (registers the classes a checkpoint names)
import metrics  # noqa: F401
import model  # noqa: F401
import train
from kit import training  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--num-train", "8", "--num-val", "8", "--input-size", "64",
        "--resize-before-crop", "80", "--batch-size", "4", "--backbone", "mobilenetv2", "--backbone-weights",
        "none", "--aspp-filters", "16", "--bn-momentum", "0.9", "--lr", "1e-3", "--epochs", "1",
        "--steps-per-epoch", "2", "--verbose", "1", "--strategy", "multiworker"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    download_data.ensure_synthetic(d, 8, 8, progress=False)  # the recipe train.py asks for: not regenerated
    return d


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _worker(index: int, ports: list[int], argv: list[str]) -> subprocess.Popen:
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"worker still running after {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")
    return process.returncode, out, err


def _assert_same_weights(chief_file: Path, worker_file: Path, steps: int) -> None:
    chief_model, other = keras.models.load_model(chief_file), keras.models.load_model(worker_file)
    assert len(chief_model.weights) == len(other.weights)
    for a, b in zip(chief_model.weights, other.weights):  # batch-norm statistics included
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    assert int(chief_model.optimizer.iterations) == int(other.optimizer.iterations) == steps


def _train_once(data_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path, list]:
    """Two workers, one epoch of 2 steps: the chief in RUN, the worker pointed at its own empty
    folder, as on another machine without shared storage, saving its final model aside."""
    chief_dir, worker_dir = tmp_path / "run", tmp_path / "worker_run"
    worker_model = tmp_path / "worker.keras"
    ports = _free_ports(2)
    common = ["--data-dir", str(data_dir), *TINY, "--worker-timeout", "120"]
    chief = _worker(0, ports, [*common, "--run-dir", str(chief_dir)])
    worker = _worker(1, ports, [*common, "--run-dir", str(worker_dir), "--save-worker-model", str(worker_model)])
    results = [_finish(p, 600) for p in (chief, worker)]
    for code, out, err in results:
        assert code == 0, out[-2000:] + err[-4000:]
    return chief_dir, worker_dir, worker_model, results


# One two-process run: about 30 s on 2 idle cores (every variable's creation and the first
# step's collectives wait on the other process).
def test_two_workers_train_to_the_same_weights_and_only_the_chief_writes(data_dir, tmp_path):
    chief_dir, worker_dir, worker_model, results = _train_once(data_dir, tmp_path)
    assert "Strategy over 2 replica(s)" in results[0][1]
    assert "epoch 1/1" in results[0][1] and "val_mean_iou" in results[0][1]

    for name in ("config.json", "log.csv", "best.keras", "state/last.keras", "state/state.json"):
        assert (chief_dir / name).is_file(), name
    state = json.loads((chief_dir / "state" / "state.json").read_text())
    assert state["epoch"] == 0 and state["finished"] is False and np.isfinite(state["history"][0]["val_loss"])
    assert not worker_dir.exists() or not any(worker_dir.iterdir())  # no lock, no log, no checkpoint

    _assert_same_weights(chief_dir / "state" / "last.keras", worker_model, steps=2)


# Three two-process runs (train, a refused resume, a resume): 81 s on 2 otherwise idle cores,
# 234 s at load 7; too slow for the default suite.
@pytest.mark.benchmark
def test_two_workers_resume_together_from_a_shared_run_directory(data_dir, tmp_path):
    chief_dir, worker_dir, worker_model, _ = _train_once(data_dir, tmp_path)
    common = ["--data-dir", str(data_dir), *TINY, "--worker-timeout", "120"]
    # Resuming needs the run directory on storage every worker reads: a worker that sees no run
    # there would start afresh while the chief resumes, so both stop with an error instead.
    more = [*common, "--epochs", "2"]
    ports = _free_ports(2)
    results = [_finish(p, 600) for p in (_worker(0, ports, [*more, "--run-dir", str(chief_dir)]),
                                          _worker(1, ports, [*more, "--run-dir", str(worker_dir)]))]
    for code, out, err in results:
        assert code == 1 and "error: the workers disagree on the epoch to resume after (from 0 to 1)" in err, err[-3000:]

    ports = _free_ports(2)
    results = [_finish(p, 600) for p in (
        _worker(0, ports, [*more, "--run-dir", str(chief_dir)]),
        _worker(1, ports, [*more, "--run-dir", str(chief_dir), "--save-worker-model", str(worker_model)]))]
    for code, out, err in results:
        assert code == 0 and f"resuming {chief_dir} after epoch 1" in out, out[-2000:] + err[-4000:]
    state = json.loads((chief_dir / "state" / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    assert len((chief_dir / "log.csv").read_text().splitlines()) == 3
    _assert_same_weights(chief_dir / "state" / "last.keras", worker_model, steps=4)


def test_a_missing_worker_is_an_error_after_the_timeout(data_dir, tmp_path):
    ports = _free_ports(2)
    start = time.monotonic()
    alone = _worker(0, ports, ["--data-dir", str(data_dir), *TINY, "--run-dir", str(tmp_path / "run"),
                               "--worker-timeout", "8"])
    code, out, err = _finish(alone, 120)
    assert code == 1, out[-2000:] + err[-3000:]
    assert f"error: worker 1 (127.0.0.1:{ports[1]}) did not answer within 8 s" in err
    assert time.monotonic() - start < 90
    assert not (tmp_path / "run" / "state").exists()


def test_settings_it_cannot_run_are_refused_before_any_worker_waits(data_dir, tmp_path, monkeypatch):
    argv = ["--data-dir", str(data_dir), *TINY, "--run-dir", str(tmp_path / "run")]
    monkeypatch.delenv(distributed.TF_CONFIG, raising=False)
    with pytest.raises(config.ConfigError, match="--xla is not supported with --strategy multiworker"):
        train.main(train.parse_args([*argv, "--xla"]))
    with pytest.raises(distributed.ClusterError, match="needs TF_CONFIG"):
        train.main(train.parse_args(argv))
    monkeypatch.setenv(distributed.TF_CONFIG, json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                          "task": {"type": "worker", "index": 3}}))
    with pytest.raises(distributed.ClusterError, match="task index 3 is not in the 1 worker address"):
        train.main(train.parse_args(argv))
    with pytest.raises(config.ConfigError, match="--worker-timeout must be positive"):
        train.main(train.parse_args([*argv, "--worker-timeout", "0"]))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address", ["localhost:abc", "localhost:", "localhost:99999", ":2222"])
def test_a_cluster_address_without_a_usable_port_is_refused(monkeypatch, address):
    monkeypatch.setenv(distributed.TF_CONFIG, json.dumps({"cluster": {"worker": [address]},
                                                          "task": {"type": "worker", "index": 0}}))
    with pytest.raises(distributed.ClusterError, match="not a cluster description"):
        distributed.cluster_from_env()
