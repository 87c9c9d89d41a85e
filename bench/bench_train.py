"""Training throughput of build_deeplabv3 against this machine's measured matmul peak.

    python bench/bench_train.py [--sizes 384,256] [--batch-size 4] [--steps 4] [--kernel-sizes 384]

In one run: the dense matmul peak in float32 and bfloat16 (FLOP/s), and for each size the
training images/s of DeepLab v3 (float32, bfloat16 mixed precision, and float32 compiled with
XLA), its forward FLOPs per image, training FLOPs (3x forward) per second and the fraction of
the matmul peak; plus the chapter's model as written (bench/chapter_model.py) at the same size
and batch. FLOPs are counted two ways (bench/flops.py): every kernel tap (the usual convention,
`fraction_of_matmul_peak`) and only taps that read real input rather than "same" padding
(`fraction_in_bounds`, the stricter figure: ASPP's wide rates mostly read padding).
At `--kernel-sizes`, float32 training also runs with each dilated-conv kernel
(kernels.dilated_conv_kernel: native, taps, portable, keras) with oneDNN on and off
(TF_ENABLE_ONEDNN_OPTS=1/0), so one run shows both paths on the machine it runs on; a kernel
TensorFlow cannot run there (native without oneDNN or a GPU) is reported as unsupported.
The other configurations run as train.py does (oneDNN asked for on x86, kit/runtime.py).
Random inputs; the pipeline is measured separately (bench_pipeline.py). Each configuration
runs in a fresh process: measured one after another in one process, the second model here
trained up to 30% slower than it does alone (and oneDNN is chosen when TensorFlow loads).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import emit, machine

from kit import runtime

runtime.prefer_onednn()  # measure what train.py runs: it asks for oneDNN before TensorFlow loads

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import losses  # noqa: E402
from kit import training  # noqa: E402
import metrics  # noqa: E402
import model as deeplab  # noqa: E402
from kit import kernels  # noqa: E402
from chapter_model import build_chapter_deeplabv3  # noqa: E402
from flops import forward_flops  # noqa: E402

# (dilated-conv kernel, TF_ENABLE_ONEDNN_OPTS) pairs compared at --kernel-sizes.
KERNEL_CONFIGS = (("native", "1"), ("native", "0"), ("taps", "1"), ("taps", "0"), ("portable", "1"),
                  ("portable", "0"), ("keras", "1"), ("keras", "0"))


def matmul_peak(dtype: str, n: int = 4096, repeats: int = 6) -> float:
    """FLOP/s of an n x n matmul chain, the best of `repeats` timed runs."""
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    step = tf.function(lambda x: tf.matmul(x, x))
    step(a).numpy()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        step(a).numpy()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def warmed_up_step(model: keras.Model, size: int, batch: int, xla: bool = False):
    """Compile `model` with train.py's optimizer, loss and metrics, take two warm-up training
    steps on a random (batch, size, size) batch, and return a function taking one more step."""
    model.compile(optimizer=training.make_optimizer("adam", 1e-4), loss=losses.ce_dice_loss_from_logits(),
                  metrics=metrics.segmentation_metrics(), jit_compile=xla)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 21, (batch, size, size)).astype("int32")
    for _ in range(2):
        model.train_on_batch(x, y)
    return lambda: model.train_on_batch(x, y)


def train_rate(model: keras.Model, size: int, batch: int, steps: int, xla: bool = False) -> float:
    """Training images/s of a compiled-here model on random data, after two warm-up steps."""
    step = warmed_up_step(model, size, batch, xla)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="384,256", help="comma-separated square input sizes")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="timed training steps per configuration")
    p.add_argument("--no-bf16", action="store_true", help="skip the mixed-precision runs")
    p.add_argument("--no-chapter", action="store_true", help="skip the chapter baseline")
    p.add_argument("--xla-sizes", default="384", help="sizes to also measure with XLA (empty: none)")
    p.add_argument("--kernel-sizes", default="384",
                   help="sizes to also measure with every dilated-conv kernel, oneDNN on and off (empty: none)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", nargs=4, metavar=("MODEL", "POLICY", "SIZE", "XLA"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(name: str, policy: str, size: int, batch: int, steps: int, xla: bool) -> dict:
    """Images/s and forward FLOPs of one configuration (run in its own process), and what ran it."""
    keras.mixed_precision.set_global_policy(policy)
    model = (deeplab.build_deeplabv3((size, size, 3), backbone_weights=None) if name == "deeplabv3"
             else build_chapter_deeplabv3((size, size, 3)))
    kernel = kernels.dilated_conv_kernel(policy.removeprefix("mixed_")) if name == "deeplabv3" else "keras"
    ran = {"onednn": kernels.onednn_enabled(), "dilated_conv": kernel}
    try:
        rate = train_rate(model, size, batch, steps, xla)
    except tf.errors.InvalidArgumentError as err:  # e.g. native dilated gradients without oneDNN
        # TensorFlow's message ends with the reason, then "[[{{node ...}}]]".
        lines = [line for line in str(err).splitlines() if line.strip() and not line.strip().startswith("[[")]
        return {**ran, "unsupported": lines[-1].strip()[:200]}
    return {**ran, "images_per_s": rate, "forward_flops": forward_flops(model),
            "forward_flops_in_bounds": forward_flops(model, in_bounds=True)}


def _run(config: tuple, args, peaks: dict) -> dict:
    """Measure one (model, precision, size, xla, kernel, onednn) configuration in a fresh process."""
    name, policy, size, xla, kernel, onednn = config
    env = dict(os.environ)
    if kernel:
        env[kernels.DILATED_CONV_ENV] = kernel
    if onednn:
        env[runtime.ONEDNN_ENV] = onednn
    done = subprocess.run([sys.executable, __file__, "--child", name, policy, str(size), "xla" if xla else "-",
                           "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
                          capture_output=True, text=True, check=True, env=env)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    run = {"model": name, "size": size, "precision": policy, "xla": xla, "onednn": measured["onednn"],
           "dilated_conv": measured["dilated_conv"], "forced": bool(kernel)}
    if "unsupported" in measured:
        return {**run, "unsupported": measured["unsupported"]}
    rate, flops, inside = measured["images_per_s"], measured["forward_flops"], measured["forward_flops_in_bounds"]
    achieved = 3 * flops * rate
    peak = peaks["bfloat16" if "bfloat16" in policy else "float32"]
    return {**run, "images_per_s": round(rate, 3), "forward_gflops_per_image": round(flops / 1e9, 2),
            "forward_gflops_in_bounds": round(inside / 1e9, 2), "achieved_gflops": round(achieved / 1e9, 1),
            "fraction_of_matmul_peak": round(achieved / peak, 3),
            "fraction_in_bounds": round(3 * inside * rate / peak, 3),
            "fraction_of_fp32_peak": round(achieved / peaks["float32"], 3)}


def main(args):
    if args.child:
        name, policy, size, xla = args.child
        print(json.dumps(measure(name, policy, int(size), args.batch_size, args.steps, xla == "xla")))
        return
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    result = {"benchmark": "training throughput", "machine": machine(), "batch_size": args.batch_size,
              "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
              "bf16_over_fp32_peak": round(peaks["bfloat16"] / peaks["float32"], 2), "runs": []}
    xla_sizes = {int(s) for s in args.xla_sizes.split(",") if s}
    kernel_sizes = {int(s) for s in args.kernel_sizes.split(",") if s}
    for size in (int(s) for s in args.sizes.split(",")):
        # (model, precision, size, xla, forced dilated-conv kernel, forced TF_ENABLE_ONEDNN_OPTS)
        configs = [("deeplabv3", "float32", size, False, "", "")]
        configs += [] if args.no_bf16 else [("deeplabv3", "mixed_bfloat16", size, False, "", "")]
        configs += [("deeplabv3", "float32", size, True, "", "")] if size in xla_sizes else []
        configs += [] if args.no_chapter else [("chapter", "float32", size, False, "", "")]
        configs += [("deeplabv3", "float32", size, False, k, o) for k, o in KERNEL_CONFIGS] if size in kernel_sizes else []
        for config in configs:
            run = _run(config, args, peaks)
            print(run, flush=True)
            result["runs"].append(run)
    result["ratios"] = ratios(result["runs"])
    emit(result, args.out)


def ratios(runs: list[dict]) -> dict:
    """Speed ratios per size, for the pairs of configurations that both ran."""
    def key(run):  # (model, precision, xla, (kernel, oneDNN) when forced)
        return run["model"], run["precision"], run["xla"], (run["dilated_conv"], run["onednn"]) if run["forced"] else None

    def forced(kernel, onednn):
        return "deeplabv3", "float32", False, (kernel, onednn)

    as_train_py = ("deeplabv3", "float32", False, None)
    pairs = {"bf16_over_fp32": (("deeplabv3", "mixed_bfloat16", False, None), as_train_py),
             "xla_over_no_xla": (("deeplabv3", "float32", True, None), as_train_py),
             "product_over_chapter": (as_train_py, ("chapter", "float32", False, None)),
             "native_over_keras_onednn_on": (forced("native", True), forced("keras", True)),
             "portable_over_keras_onednn_off": (forced("portable", False), forced("keras", False)),
             "taps_over_native_onednn_on": (forced("taps", True), forced("native", True)),
             "taps_over_portable_onednn_off": (forced("taps", False), forced("portable", False)),
             "train_py_over_keras_onednn_off": (as_train_py, forced("keras", False))}
    by = {(r["size"], key(r)): r["images_per_s"] for r in runs if "images_per_s" in r}
    return {f"{size}px": {name: round(by[size, top] / by[size, bottom], 2)
                          for name, (top, bottom) in pairs.items() if (size, top) in by and (size, bottom) in by}
            for size in sorted({r["size"] for r in runs}, reverse=True)}


if __name__ == "__main__":
    main(parse_args())
