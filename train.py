"""Train DeepLab v3 on PASCAL VOC 2012 (or the synthetic stand-in), resumably.

    python train.py                 # the chapter's experiment: VOC 2012, ResNet-50 (ImageNet), 384 px, 25 epochs
    python train.py --demo          # offline: synthetic data, small model, a few minutes on a laptop CPU

Running the same command again after an interruption continues from the last finished epoch
(weights, optimizer state, learning rate, best score, early-stopping counters).
Outputs go to the run directory (see training.py for its layout).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import runtime

runtime.prefer_onednn()  # before TensorFlow loads, which reads the setting once (see runtime.py)

import keras  # noqa: E402

import download_data  # noqa: E402
import losses  # noqa: E402
import metrics  # noqa: E402
import pipeline  # noqa: E402
import training  # noqa: E402
from model import BACKBONES, build_deeplabv3, dilated_conv_kernel, onednn_enabled  # noqa: E402
from voc import NUM_CLASSES  # noqa: E402

# The chapter's experiment, and an offline demo that finishes in minutes on 2 CPU cores.
FULL = {"dataset": "voc", "run_dir": "eval/deeplabv3", "input_size": 384, "resize_before_crop": 444,
        "batch_size": 8, "epochs": 25, "lr": 1e-4, "backbone": "resnet50", "backbone_weights": "imagenet",
        "aspp_filters": 256, "bn_momentum": None}
DEMO = {"dataset": "synthetic", "run_dir": "eval/demo", "input_size": 128, "resize_before_crop": 160,
        "batch_size": 8, "epochs": 15, "lr": 1e-3, "backbone": "mobilenetv2", "backbone_weights": "none",
        "aspp_filters": 64, "bn_momentum": 0.9}
# Flags that change what is trained: a resumed run must not change them.
IDENTITY_KEYS = ("dataset", "input_size", "resize_before_crop", "batch_size", "lr", "loss", "backbone",
                 "backbone_weights", "output_stride", "multi_grid", "aspp_filters", "bn_momentum", "mixed_precision", "seed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="offline demo: synthetic data, MobileNetV2, 128 px (see README)")
    p.add_argument("--dataset", choices=("voc", "synthetic"), help="VOC 2012 (downloaded if absent) or synthetic data")
    p.add_argument("--data-dir", default="data", help="where download_data.py puts (or finds) the data")
    p.add_argument("--run-dir", help="outputs: config, log, checkpoints (default eval/deeplabv3, eval/demo with --demo)")
    p.add_argument("--input-size", type=int, help="square crop fed to the model (default 384)")
    p.add_argument("--resize-before-crop", type=int, help="size to enlarge to before a random crop (default 444)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 8)")
    p.add_argument("--epochs", type=int, help="epochs to train (default 25)")
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over the training images")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    p.add_argument("--loss", choices=sorted(losses.LOSSES), default="ce_dice", help="training loss")
    p.add_argument("--backbone", choices=BACKBONES, help="resnet50 (default) or the lighter mobilenetv2")
    p.add_argument("--backbone-weights", help="imagenet (default), none, or a path to a Keras weights file")
    p.add_argument("--output-stride", type=int, choices=(16, 8), default=16, help="backbone output stride")
    p.add_argument("--multi-grid", action="store_true", help="conv5 rates x (1, 2, 4)")
    p.add_argument("--aspp-filters", type=int, help="channels of each ASPP branch (default 256)")
    p.add_argument("--bn-momentum", type=float, help="batch-norm momentum (default: Keras's; 0.9 with --demo)")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 on GPU, mixed_bfloat16 on CPU")
    p.add_argument("--xla", action="store_true",
                   help="compile the training step with XLA (jit_compile): for GPUs; 1.75-1.85x slower on the CPUs measured")
    p.add_argument("--strategy", choices=("auto", "mirrored", "multiworker"), default="auto",
                   help="auto: all local GPUs if several; mirrored; multiworker (TF_CONFIG)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and augmentation")
    p.add_argument("--early-stopping-patience", type=int, default=6, help="epochs without val_loss improvement")
    p.add_argument("--lr-patience", type=int, default=3, help="epochs before ReduceLROnPlateau cuts the LR by 10")
    p.add_argument("--num-train", type=int, default=200, help="synthetic data: training images")
    p.add_argument("--num-val", type=int, default=100, help="synthetic data: val images (halved into val and test)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --run-dir instead of resuming it")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras progress output")
    return p.parse_args(argv)


def resolve_config(args) -> dict:
    """Flags given explicitly win; the rest come from FULL or, with --demo, DEMO."""
    base = DEMO if args.demo else FULL
    config = {k: v for k, v in vars(args).items() if k not in ("fresh", "verbose")}
    for key, default in base.items():
        if config.get(key) is None:
            config[key] = default
    return config


def datasets(config: dict, voc_root: Path):
    """(train, val, steps_per_epoch): train repeats forever, val is one pass at input size."""
    size = (config["input_size"],) * 2
    train = pipeline.voc_dataset(voc_root, "train", config["batch_size"], epochs=None, input_size=size,
                                 resize_to_before_crop=(config["resize_before_crop"],) * 2, augmentation=True,
                                 shuffle=True, seed=config["seed"])
    val = pipeline.voc_dataset(voc_root, "val", config["batch_size"], epochs=1, input_size=size)
    steps = config["steps_per_epoch"] or math.ceil(pipeline.subset_size(voc_root, "train") / config["batch_size"])
    return train, val, steps


def build_model(config: dict) -> keras.Model:
    """A fresh compiled DeepLab v3 for this configuration (any input size)."""
    model = build_deeplabv3((None, None, 3), NUM_CLASSES, backbone_weights=config["backbone_weights"],
                            output_stride=config["output_stride"], backbone=config["backbone"],
                            multi_grid=(1, 2, 4) if config["multi_grid"] else None,
                            aspp_filters=config["aspp_filters"], bn_momentum=config["bn_momentum"])
    model.compile(optimizer=keras.optimizers.Adam(config["lr"]), loss=losses.get_loss(config["loss"]),
                  metrics=metrics.segmentation_metrics(), jit_compile=config["xla"])
    return model


def check_same_run(run_dir: Path, config: dict) -> None:
    """Refuse to resume a run that was started with different training flags."""
    saved = json.loads((run_dir / "config.json").read_text())
    changed = {k: (saved.get(k), config[k]) for k in IDENTITY_KEYS if saved.get(k) != config[k]}
    if changed:
        raise SystemExit(f"error: {run_dir} holds a run with other settings {changed} (saved, now); "
                         f"pass another --run-dir, or --fresh to discard it")


def main(args) -> dict:
    config = resolve_config(args)
    run_dir = Path(config["run_dir"])
    print("configuration:\n" + json.dumps(config, indent=2), flush=True)
    keras.utils.set_random_seed(config["seed"])
    strategy = training.make_strategy(config["strategy"])
    chief = training.is_chief(strategy)
    policy = training.set_precision(config["mixed_precision"])
    compute = policy.removeprefix("mixed_")
    print(f"strategy {type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s), precision {policy}, "
          f"CPU kernels {'oneDNN' if onednn_enabled() else 'Eigen (oneDNN off)'}, "
          f"dilated convs {dilated_conv_kernel(compute)}")
    if policy == "mixed_bfloat16" and not runtime.has_bfloat16():
        print("warning: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so mixed bfloat16 is "
              "emulated: it trained 5.5x slower than float32 on an AVX2 CPU. Drop --mixed-precision here.")

    if args.fresh and run_dir.exists() and chief:
        shutil.rmtree(run_dir)

    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=config["lr_patience"],
                                                  min_lr=1e-8)
    early_stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["early_stopping_patience"])
    state = training.RunState(run_dir, reduce_lr, early_stop, write=chief)
    resumed = state.load()
    if resumed:
        check_same_run(run_dir, config)
        if resumed["finished"] or resumed["epoch"] + 1 >= config["epochs"]:
            print(f"run in {run_dir} already finished after epoch {resumed['epoch'] + 1}; best {training.MONITOR} "
                  f"{resumed['best']:.4f}. Pass --fresh to train again, or more --epochs to continue.")
            return {"history": state.history, "best": state.best, "initial_epoch": resumed["epoch"] + 1}
        print(f"resuming {run_dir} after epoch {resumed['epoch'] + 1} (best {training.MONITOR} {resumed['best']:.4f})")
    elif chief:
        training.atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    voc_root = download_data.dataset_root(config["dataset"], config["data_dir"], config["num_train"],
                                          config["num_val"], progress=args.verbose > 0)
    initial_epoch = resumed["epoch"] + 1 if resumed else 0
    # A resumed run continues the augmentation stream elsewhere rather than replaying epoch 1's.
    train_ds, val_ds, steps = datasets({**config, "seed": config["seed"] + initial_epoch}, voc_root)

    with strategy.scope():
        model = keras.models.load_model(state.last_path) if resumed else build_model(config)
    model.jit_compile = config["xla"]  # not part of a saved model's compile config
    callbacks = [reduce_lr, early_stop, state, training.EpochSummary(config["epochs"])]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False))
    model.fit(train_ds, validation_data=val_ds, epochs=config["epochs"], initial_epoch=initial_epoch,
              steps_per_epoch=steps, callbacks=callbacks, verbose=args.verbose, shuffle=False)

    if state.diverged:
        raise SystemExit(f"error: training stopped: {state.diverged}. The last good state is kept in "
                         f"{state.last_path.parent}; try a lower --lr, or --fresh to start over.")
    best_row = max(state.history, key=lambda r: r.get(training.MONITOR, -1.0)) if state.history else {}
    summary = ", ".join(f"{k} {best_row[k]:.4f}" for k in ("val_pixel_accuracy", "val_mean_accuracy",
                                                          "val_mean_iou") if k in best_row)
    print(f"best epoch {best_row.get('epoch')}: {summary}; model saved to {state.best_path}")
    return {"history": state.history, "best": state.best, "initial_epoch": initial_epoch}


if __name__ == "__main__":
    main(parse_args())
