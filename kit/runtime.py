"""Settings TensorFlow reads once, when it loads: entry points call these before importing it.

    from kit import runtime
    runtime.start(onednn=True)  # train.py, first thing: oneDNN on x86, a quiet TensorFlow

TensorFlow decides when its library loads whether its CPU kernels go through oneDNN
(TF_ENABLE_ONEDNN_OPTS; unset means "on" only for x86 CPUs with AVX-512-class features), so
the choice has to be made before the first `import tensorflow`, and cannot change afterwards.
"""
from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
X86 = ("x86_64", "amd64", "i386", "i686")
# CPU features that decide which kernels are fast (see cpu_features): TensorFlow's and oneDNN's
# for float32 and bfloat16, and XNNPACK's (LiteRT's CPU delegate) for int8.
KNOWN_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "avx_vnni", "amx_int8",
                  "asimd", "asimddp", "i8mm", "sve")
# Instructions that multiply int8 by int8 and add into int32 in one step (x86 VNNI and AMX,
# ARM's dot product and matrix multiply), for which XNNPACK has int8 kernels of its own;
# without them its int8 convolutions widen to 16 bits first (AVX2, plain NEON).
INT8_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def prefer_onednn() -> bool:
    """Turn oneDNN on for training on x86 CPUs, unless TF_ENABLE_ONEDNN_OPTS already decides.

    Measured on a 2-core AVX2 EPYC (docs/performance.md, "Where it runs"): training at 384 px, batch 4, runs
    0.83 images/s with oneDNN against 0.56 without (TensorFlow's default there), so train.py
    asks for it. Inference at batch 1 is the other way round on that CPU (640-750 ms against
    370-440 ms per 384 px image), so evaluate.py and predict.py leave TensorFlow's default.
    ARM builds are left alone: their oneDNN (with ACL) is unmeasured here.

    Returns whether the setting can still take effect (False once TensorFlow is loaded, as in
    a test process that imported it earlier; then this changes nothing).
    """
    if "tensorflow" in sys.modules:
        return False
    if platform.machine().lower() in X86:
        os.environ.setdefault(ONEDNN_ENV, "1")
    return True


def start(onednn: bool = False, debug: bool | None = None) -> None:
    """Load TensorFlow and Keras as an entry point wants them, before anything else imports them.

    onednn: prefer_onednn() (train.py). Unless `debug` (default: --debug on the command line or
    DEEPLAB_DEBUG set), TensorFlow's start-up log is hidden: the lines its C++ side writes
    while it loads (a CPU machine's "Could not find cuda drivers", the oneDNN notice) go to
    /dev/null, and TF_CPP_MIN_LOG_LEVEL=3 (unless set) drops its later info, warnings and
    logged errors such as cuInit's on a machine without a GPU. Python exceptions are unaffected.
    """
    if onednn:
        prefer_onednn()
    if debug is None:
        from kit import cli

        debug = cli.debugging()
    if debug or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401 (loads TensorFlow, and Keras's own start-up lines)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The KNOWN_FEATURES this CPU has, from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split()) & frozenset(KNOWN_FEATURES)
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC"), or the platform's machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def int8_features() -> list[str]:
    """The INT8_FEATURES this CPU has, in that order (empty: no int8 dot-product instructions)."""
    return [f for f in INT8_FEATURES if f in cpu_features()]


def has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); without, mixed
    bfloat16 is emulated: 5.5x slower than float32 at 128 px on an AVX2 EPYC."""
    return bool(cpu_features() & {"avx512_bf16", "amx_bf16"})
