"""Helpers shared by the benchmark scripts: data to measure on, machine facts, JSON output."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kit import atomic  # noqa: E402  (after the line above, for a script run from bench/)


def machine() -> dict:
    """What the numbers were measured on."""
    import tensorflow as tf

    from kit import kernels, runtime

    cpu = runtime.cpu_model()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    # The CPU features decide TensorFlow's kernels: oneDNN is on by default only with
    # AVX-512-class ones, and bfloat16 is fast only with avx512_bf16 or AMX.
    return {"cpu": cpu, "arch": platform.machine(), "cpu_features": sorted(runtime.cpu_features()),
            "cores": os.cpu_count(), "gpus": gpus, "tensorflow": tf.__version__, "onednn": kernels.onednn_enabled(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get(runtime.ONEDNN_ENV, "unset"), "python": platform.python_version()}


def bench_voc_root(data_dir: str | Path, num_train: int, num_val: int = 20) -> Path:
    """A synthetic VOC tree at VOC-like sizes (200-500 px) to measure on."""
    import download_data

    return download_data.ensure_synthetic(data_dir, num_train, num_val, seed=0, progress=False)


def choices(parser, flag: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated option's values, each one of `allowed` and at least one; otherwise
    the parser's usage error names the flag and what it takes."""
    values = [s for s in text.split(",") if s]
    unknown = [s for s in values if s not in allowed]
    if unknown or not values:
        parser.error(f"{flag} {','.join(unknown) or '(none)'}: choose from {', '.join(allowed)}")
    return values


def emit(result: dict, out: str | None = None) -> None:
    """Print the result as JSON and, if `out` is given, write it there too: through a temporary
    name, so that a failure or a kill never leaves half a file where an earlier result was.

    Raises SystemExit with an `error:` line when `out` cannot be written (the JSON is printed first).
    """
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        try:
            atomic.write_text(out, text + "\n")
        except OSError as err:
            raise SystemExit(f"error: cannot write {out} ({err.strerror or err}); the result is printed above")
