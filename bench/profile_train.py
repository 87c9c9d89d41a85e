"""Where a training step's time goes: TensorFlow profiler trace, summed by op and by layer.

    python bench/profile_train.py [--size 384] [--batch-size 4] [--steps 2] [--top 15]

Builds DeepLab v3 (random weights), compiles it and takes two warm-up steps as
bench_train.py does (train.py's optimizer, loss and metrics, random data), then traces
`--steps` steps with the TensorFlow profiler. The trace is kept under `--logdir` (open it with
TensorBoard's profile plugin); the JSON printed here sums the traced kernels' wall time per
step, by TensorFlow op type (e.g. `_MklNativeConv2DBackpropFilter`) and by model layer,
largest first. Ops that overlap in time are each counted in full, so with TensorFlow's
default of running independent ops side by side the sums exceed the step time;
`--inter-op-threads 1` runs one op at a time, so that the per-op times add up to the step.
"""
from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

from common import emit, machine

from kit import runtime

runtime.prefer_onednn()  # measure what train.py runs: it asks for oneDNN before TensorFlow loads

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench_train import warmed_up_step  # noqa: E402
from model import build_deeplabv3  # noqa: E402

# Framework bookkeeping events wrap the kernels; counting them would count everything twice.
WRAPPERS = ("ExecutorState", "EagerExecute", "EagerKernelExecute", "EagerLocalExecute", "KernelAndDeviceFunc",
            "TFE_Py_Execute", "one_step_on_data", "__inference")


def op_times(xplane_path: Path, steps: int) -> tuple[dict, dict]:
    """Seconds per step by op type and by layer, from a profiler XSpace file."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as err:  # an internal module: name what broke rather than guess
        raise SystemExit(f"error: this TensorFlow has no tsl xplane_pb2 to read {xplane_path} ({err}); "
                         f"open the trace with TensorBoard's profile plugin instead") from err
    space = xplane_pb2.XSpace()
    space.ParseFromString(xplane_path.read_bytes())
    by_op, by_layer = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" not in name or name.startswith(WRAPPERS):
                    continue
                # "gradient_tape/deeplabv3_.../aspp_1/b3_rate18_conv_1/convolution/...:_MklNativeConv2D"
                # or "adam/Mul_851:Mul": the layer is the scope under the model's (ASPP's sublayers
                # kept apart), else the top scope (optimizer, loss, metrics).
                scope, op = name.rsplit(":", 1)
                parts = [p for p in scope.split("/") if p != "gradient_tape"]
                keep = 1
                if parts[0].startswith("deeplabv3") and len(parts) > 1:
                    parts = parts[1:]
                    keep = 2 if parts[0].startswith("aspp") else 1
                layer = "/".join(p.removesuffix("_1") for p in parts[:keep])
                seconds = event.duration_ps / 1e12 / steps
                by_op[op] += seconds
                by_layer[layer] += seconds
    return dict(by_op), dict(by_layer)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="traced training steps")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    p.add_argument("--inter-op-threads", type=int, help="ops run side by side (default: TensorFlow's)")
    p.add_argument("--top", type=int, default=15, help="how many ops and layers to list")
    p.add_argument("--logdir", help="where the trace goes (default: a temporary folder, removed)")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(args):
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_deeplabv3((args.size, args.size, 3), backbone_weights=None)
    train_step = warmed_up_step(model, args.size, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(args.logdir or tmp)
        tf.profiler.experimental.start(str(logdir))
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step()
        step = (time.perf_counter() - start) / args.steps
        tf.profiler.experimental.stop()
        traces = sorted(logdir.glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
        if not traces:
            raise SystemExit(f"error: the profiler wrote no trace under {logdir}")
        by_op, by_layer = op_times(traces[-1], args.steps)

    def top(table):
        return {k: round(v, 4) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:args.top]}

    emit({"benchmark": "training step profile", "machine": machine(), "size": args.size,
          "batch_size": args.batch_size, "inter_op_threads": args.inter_op_threads or "default", "precision": "mixed_bfloat16" if args.mixed_precision else "float32",
          "seconds_per_step_traced": round(step, 3), "kernel_seconds_per_step": round(sum(by_op.values()), 3),
          "by_op_type": top(by_op), "by_layer": top(by_layer),
          "trace": str(traces[-1]) if args.logdir else None}, args.out)


if __name__ == "__main__":
    main(parse_args())
