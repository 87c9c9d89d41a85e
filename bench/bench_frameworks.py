"""Training throughput of this kit against PyTorch, float32 and bfloat16, measured in one run.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    python bench/bench_frameworks.py [--torch-python /tmp/torchvenv/bin/python] [--size 384]
        [--batch-size 4] [--steps 4] [--rounds 2] [--precisions float32,bfloat16] [--out FILE]

In each round, in turns: our DeepLab v3 (bench_train.py's measurement: train.py's optimizer,
loss and metrics, random data) in float32 and in mixed bfloat16, and PyTorch's
(bench_torch.py: torchvision's deeplabv3_resnet50 at output stride 16, Adam and cross entropy)
in float32 and under bfloat16 autocast, each in NCHW and channels_last. Every configuration
runs in a fresh process, one at a time, so no two share the cores; the rounds repeat the
whole sequence, so a slow spell of a shared machine hits every configuration, and each
configuration's best round is compared (the median is given too).

Our float32 also runs with DEEPLAB_WINOGRAD=off ("ours float32 direct-3x3"), so that the gain of
Winograd's 3x3 convs (kit/kernels.py) over the direct convolution is measured in the same run.

Reported: images/s per configuration; our float32 and bfloat16 over PyTorch's best layout in
the same precision; our bfloat16 over our float32; the dense matmul peaks (float32 and
bfloat16) and our training's fraction of them, counting every kernel tap and counting only
taps that read inside the image (bench/flops.py; a step is 3x the forward FLOPs).
With TF_ENABLE_ONEDNN_OPTS=0 set, our side runs without oneDNN (PyTorch is unaffected).
On a CPU without bfloat16 instructions (AVX2 only) both frameworks emulate bfloat16 at a small
fraction of float32's speed: `--precisions float32` measures float32 alone there.
Not part of the test suite; torch is not a project dependency.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import choices, emit, machine

from kit import runtime

runtime.prefer_onednn()  # as train.py, unless TF_ENABLE_ONEDNN_OPTS is already set

HERE = Path(__file__).resolve().parent
PRECISIONS = ("float32", "bfloat16")
LAYOUTS = ("nchw", "channels_last")
OUR_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}  # Keras's dtype policy per precision


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-python", default="/tmp/torchvenv/bin/python",
                   help="a python with torch installed (see the usage above)")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="timed training steps per configuration and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="comma-separated, of float32, bfloat16 (float32 alone on CPUs without bfloat16 instructions)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    args.precisions = choices(p, "--precisions", args.precisions, PRECISIONS)
    if not Path(args.torch_python).is_file():
        p.error(f"--torch-python {args.torch_python} does not exist; create it with `python3 -m venv "
                f"/tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy`")
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be at least 1")
    return args


def _last_json(stdout: str, what: str) -> dict:
    """The JSON a child printed: its last line (ours) or the whole output (bench_torch.py's emit)."""
    text = stdout.strip()
    for candidate in (text.splitlines()[-1] if text else "", text):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise SystemExit(f"error: {what} printed no JSON result:\n{stdout[-2000:]}")


DIRECT_3X3 = "direct-3x3"  # our variant with Winograd off


def run_ours(policy: str, args, variant: str = "") -> dict:
    """bench_train.py's child: images/s and forward FLOPs of our model in `policy`; the
    DIRECT_3X3 variant with DEEPLAB_WINOGRAD=off."""
    from kit.kernels import WINOGRAD_ENV  # TensorFlow is loaded by now (main), after prefer_onednn

    env = {**os.environ, WINOGRAD_ENV: "off"} if variant == DIRECT_3X3 else None
    done = subprocess.run([sys.executable, str(HERE / "bench_train.py"), "--child", "deeplabv3", policy,
                           str(args.size), "-", "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
                          capture_output=True, text=True, cwd=HERE, env=env)
    if done.returncode:
        raise SystemExit(f"error: our {policy} run failed:\n{done.stderr[-3000:]}")
    return _last_json(done.stdout, f"our {policy} run")


def run_torch(precision: str, layout: str, args) -> dict:
    """bench_torch.py in `args.torch_python`: images/s of one precision and layout."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}  # bench_torch imports kit.runtime (stdlib only)
    done = subprocess.run([args.torch_python, str(HERE / "bench_torch.py"), "--size", str(args.size),
                           "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                           "--precisions", precision, "--layouts", layout],
                          capture_output=True, text=True, cwd=HERE, env=env)
    if done.returncode:
        raise SystemExit(f"error: PyTorch {precision} {layout} failed:\n{done.stderr[-3000:]}")
    result = _last_json(done.stdout, f"PyTorch {precision} {layout}")
    return {"images_per_s": result["runs"][0]["images_per_s"], "torch": result["machine"]["torch"],
            "threads": result["machine"]["threads"]}


def summary(rates: list[float]) -> dict:
    return {"best": round(max(rates), 3), "median": round(statistics.median(rates), 3),
            "rounds": [round(r, 3) for r in rates]}


def main(args):
    import bench_train  # loads TensorFlow (after prefer_onednn above)

    peaks = {precision: bench_train.matmul_peak(precision) for precision in args.precisions}
    configs = ([("ours", OUR_POLICY[precision], "") for precision in args.precisions]
               + ([("ours", "float32", DIRECT_3X3)] if "float32" in args.precisions else [])
               + [("pytorch", precision, layout) for precision in args.precisions for layout in LAYOUTS])
    rates = {config: [] for config in configs}
    flops = {}
    for round_ in range(args.rounds):
        for config in configs:
            framework, precision, layout = config
            if framework == "ours":
                measured = run_ours(precision, args, layout)
                flops = {"all_taps": measured["forward_flops"], "in_bounds": measured["forward_flops_in_bounds"]}
                rate = measured["images_per_s"]
                print(f"round {round_ + 1}: ours {precision}{' ' + layout if layout else ''} ({measured['dilated_conv']} dilated convs, "
                      f"oneDNN {measured['onednn']}): {rate:.3f} images/s", file=sys.stderr, flush=True)
            else:
                rate = run_torch(precision, layout, args)["images_per_s"]
                print(f"round {round_ + 1}: pytorch {precision} {layout}: {rate:.3f} images/s",
                      file=sys.stderr, flush=True)
            rates[config].append(rate)

    def best(framework, precision, layout=None):
        """The best round of `framework` in `precision`: of `layout` if given, else of every
        layout for PyTorch and of the default configuration for ours."""
        if layout is None and framework == "ours":
            layout = ""
        found = [max(r) for (f, p, l), r in rates.items() if f == framework and p == precision
                 and (layout is None or l == layout)]
        return max(found)

    def mfu(rate, peak, count):
        return round(3 * flops[count] * rate / peaks[peak], 3)

    ratios, fractions = {}, {}
    for precision, short in (("float32", "fp32"), ("bfloat16", "bf16")):
        if precision not in args.precisions:
            continue
        ours, theirs = best("ours", OUR_POLICY[precision]), best("pytorch", precision)
        ratios[f"ours_{short}_over_pytorch_best_{short}"] = round(ours / theirs, 2)
        fractions[f"ours_{short}"] = mfu(ours, precision, "all_taps")
        fractions[f"ours_{short}_in_bounds"] = mfu(ours, precision, "in_bounds")
    if "float32" in args.precisions:
        ratios["ours_fp32_over_ours_fp32_direct_3x3"] = round(
            best("ours", "float32") / best("ours", "float32", DIRECT_3X3), 2)
    if len(args.precisions) == 2:
        ratios["ours_bf16_over_ours_fp32"] = round(best("ours", "mixed_bfloat16") / best("ours", "float32"), 2)
        ratios["pytorch_bf16_over_pytorch_fp32"] = round(best("pytorch", "bfloat16") / best("pytorch", "float32"), 2)

    result = {
        "benchmark": "training throughput, this kit against PyTorch", "machine": machine(),
        "size": args.size, "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
        "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "forward_gflops_per_image": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "images_per_s": {" ".join(filter(None, config)): summary(r) for config, r in rates.items()},
        "ratios_of_best_rounds": ratios,
        "fraction_of_matmul_peak": fractions,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main(parse_args())
