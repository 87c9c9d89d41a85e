"""Train DeepLab v3 on PASCAL VOC 2012, your own labelled data, or the synthetic stand-in, resumably.

    python train.py                                 # the chapter's experiment: VOC 2012, ResNet-50 (ImageNet), 384 px
    python train.py --demo                          # offline: synthetic data, small model, minutes on a laptop CPU
    python train.py --data-dir ~/VOCdevkit          # a VOC tree already on disk, used where it lies
    python train.py --data-dir my_cvat_export/      # your own classes (CVAT "Segmentation mask 1.1")
    python train.py --data-dir data/ADEChallengeData2016   # ADE20K, Cityscapes, CamVid, labelme, Roboflow, ...
    python train.py --strategy multiworker          # on each of several machines, with TF_CONFIG (kit/distributed.py)

Running the same command again after an interruption continues from the last finished epoch
(weights, optimizer state, learning rate, best score, early-stopping counters).
Outputs go to the run directory (see kit/training.py for its layout). Settings: kit/config.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path

from kit import runtime

runtime.start(onednn=True)  # before TensorFlow loads: it reads these settings once (see kit/runtime.py)

import keras  # noqa: E402

from kit import atomic  # noqa: E402
from kit import cli  # noqa: E402
from kit import config  # noqa: E402
from kit import data  # noqa: E402
from kit import distributed  # noqa: E402
import download_data  # noqa: E402
import losses  # noqa: E402
import metrics  # noqa: E402
import pipeline  # noqa: E402
from kit import training  # noqa: E402
from kit import kernels  # noqa: E402
from model import build_deeplabv3, inference_model, training_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="offline demo: synthetic data, MobileNetV2, 128 px (see docs/training.md)")
    config.add_arguments(p, config.TRAIN, presets=("demo",))
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --run-dir instead of resuming it")
    p.add_argument("--save-worker-model", metavar="PATH",
                   help="--strategy multiworker: a worker that is not the chief (which writes nothing into --run-dir) "
                        "saves the model it ended with here, e.g. to check that the workers agree")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="1: one progress line per epoch; 2: Keras's own output; 0: quiet")
    cli.add_debug_flag(p)
    return p.parse_args(argv)


def resolve_config(args) -> dict:
    """Flags given explicitly win; then --demo's values; then the recipe's; then the declared
    defaults (config.TRAIN)."""
    given = config.explicit(args, config.TRAIN)
    if given.get("iterations") and given.get("epochs"):
        raise config.ConfigError(f"--iterations {given['iterations']} and --epochs {given['epochs']} both set the "
                                 f"run's length (epochs are derived from iterations); give one of them")
    return config.resolve(args, config.TRAIN, presets=config.presets_for(args))


def data_tree(settings: dict, progress: bool = True) -> data.Tree:
    """The run's data tree: synthetic data generated if needed, a data set where it lies (any of
    data.FORMATS), or VOC 2012 downloaded, but only into the default data folder and only if it
    holds no data set."""
    data_dir = Path(settings["data_dir"]).expanduser()
    if settings["dataset"] == "synthetic":
        root = download_data.ensure_synthetic(data_dir, settings["num_train"], settings["num_val"], progress=progress,
                                              kind=settings["synthetic_kind"])
    elif (settings["format"] in ("auto", "voc") and not data.detect(data_dir)
          and settings["data_dir"] == config.TRAIN["data_dir"].default):
        root = download_data.ensure_voc(data_dir, progress=progress)
    else:
        root = data_dir  # resolve_tree finds the layout, or says where it looked
    return data.resolve_tree(root, settings["labelmap"], settings["val_fraction"], settings["format"])


def describe_data(tree: data.Tree, train_split: str) -> dict:
    """The DATA_KEYS config.json records: which tree, classes and how many images per split.

    Raises DataError if a split list names missing files, or if validation shares an id with
    the training split.
    """
    counts = tree.check_complete((train_split, "full-val", "test"))
    for held_out in ("full-val", "test"):
        overlap = set(tree.ids(train_split)) & set(tree.ids(held_out))
        if overlap:
            what = "validation list" if held_out == "full-val" else "test list"
            raise data.DataError(f"{len(overlap)} id(s) of the {what} are also in {train_split}, e.g. "
                                 f"{sorted(overlap)[0]}: it would score images the model trained on")
    return {**tree.describe(), "num_train_images": counts[train_split], "num_val_images": len(tree.ids("val")),
            "num_test_images": len(tree.ids("test")), "splits": tree.split_record(train_split)}


def warn_empty_classes(pixel_counts, names) -> None:
    """A class no training mask holds is never learnt, and scores 0 or nothing: say so up front."""
    empty = [name for name, count in zip(names, pixel_counts) if count == 0]
    if empty:
        print(f"warning: {len(empty)} class(es) have no pixels in the training masks: {', '.join(empty[:10])}"
              f"{', ...' if len(empty) > 10 else ''}. The model cannot learn them; check the label map "
              f"(a class coloured like the ignore value?) and the masks", flush=True)


def resolve_train_split(settings: dict, tree: data.Tree) -> str:
    """"auto" (the deeplabv3 recipe) is trainaug when the tree has SBD's list, else train."""
    if settings["train_split"] != "auto":
        return settings["train_split"]
    return "trainaug" if (tree.splits_dir / data.TRAINAUG_LIST).is_file() else "train"


def schedule_length(settings: dict, num_train_images: int) -> tuple[int, int, int]:
    """(steps per epoch, epochs, total optimizer steps): from --iterations when given (the last
    epoch is cut short where the count ends), else from --epochs."""
    steps = settings["steps_per_epoch"] or math.ceil(num_train_images / settings["batch_size"])
    if settings["iterations"]:
        steps = min(steps, settings["iterations"])
        return steps, math.ceil(settings["iterations"] / steps), settings["iterations"]
    return steps, settings["epochs"], steps * settings["epochs"]


def datasets(settings: dict, tree: data.Tree, seed: int):
    """(train, val): train repeats forever, val is one pass at input size."""
    size = (settings["input_size"],) * 2
    train = pipeline.tree_dataset(tree, settings["train_split"], settings["batch_size"], epochs=None, input_size=size,
                                  resize_to_before_crop=(settings["resize_before_crop"],) * 2, augmentation=True,
                                  shuffle=True, seed=seed, scale_range=settings["scale_range"])
    val = pipeline.tree_dataset(tree, "val", settings["batch_size"], epochs=1, input_size=size)
    return train, val


def build_model(settings: dict, num_classes: int, total_steps: int = 1) -> tuple[keras.Model, keras.Model]:
    """(model to train, single-output model for best.keras), fresh and compiled for these settings.

    They are the same model unless --aux-loss adds the auxiliary head (model.training_model).
    """
    model = build_deeplabv3((None, None, 3), num_classes, backbone_weights=settings["backbone_weights"],
                            output_stride=settings["output_stride"], backbone=settings["backbone"],
                            multi_grid=(1, 2, 4) if settings["multi_grid"] else None,
                            aspp_filters=settings["aspp_filters"], bn_momentum=settings["bn_momentum"])
    trained = training_model(model) if settings["aux_loss"] else model
    if settings["freeze_bn"]:
        training.freeze_batch_norm(trained)
    lr = training.learning_rate(settings["schedule"], settings["lr"], total_steps, settings["poly_power"],
                                settings["warmup_steps"])
    loss = losses.get_loss(settings["loss"], num_classes, settings["class_weights"],
                           settings.get("dataset_class_weights"), settings["aux_loss"])
    trained.compile(optimizer=training.make_optimizer(settings["optimizer"], lr, settings["momentum"],
                                                      settings["weight_decay"]),
                    loss=loss, metrics=metrics.segmentation_metrics(num_classes), jit_compile=settings["xla"])
    return trained, model


def check_same_run(run_dir: Path, saved: dict, settings: dict) -> None:
    """Refuse to resume a run that was started with other settings or on other data."""
    changed = config.changed_identity(saved, settings)
    if changed:
        shown = {k: v if k != "classes" else "(another class table)" for k, v in changed.items()}
        raise config.ConfigError(f"{run_dir} holds a run with other settings {shown} (saved, now); "
                                 f"pass another --run-dir, or --fresh to discard it")


def main(args) -> dict:
    settings = resolve_config(args)
    kernels.check_settings()
    run_dir = Path(settings["run_dir"])
    print("configuration:\n" + json.dumps(settings, indent=2), flush=True)
    # First: a multi-worker strategy must configure collective ops before TensorFlow lists devices.
    strategy = training.make_strategy(settings["strategy"], settings["worker_timeout"])
    keras.utils.set_random_seed(settings["seed"])
    chief = training.is_chief(strategy)
    policy = training.set_precision(settings["mixed_precision"])
    compute = policy.removeprefix("mixed_")
    print(f"strategy {type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s), precision {policy}, "
          f"CPU kernels {'oneDNN' if kernels.onednn_enabled() else 'Eigen (oneDNN off)'}, "
          f"dilated convs {kernels.dilated_conv_kernel(compute)}, 3x3 convs {kernels.winograd_setting(compute)}")
    if policy == "mixed_bfloat16" and not runtime.has_bfloat16():
        print("warning: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so mixed bfloat16 is "
              "emulated: it trained 5.5x slower than float32 on an AVX2 CPU. Drop --mixed-precision here.")

    with training.RunLock(run_dir) if chief else contextlib.nullcontext():
        return _train(args, settings, run_dir, strategy, chief)


def _train(args, settings: dict, run_dir: Path, strategy, chief: bool) -> dict:
    """The run itself, while the run directory is locked."""
    if args.fresh and chief:
        removed = training.discard_run(run_dir)
        if removed:
            print(f"--fresh: removed {', '.join(removed)} from {run_dir}")
    plateau = training.Plateau(
        "val_loss", factor=0.1, min_lr=1e-8,
        # The chapter's ReduceLROnPlateau and EarlyStopping; a schedule's rate and length are fixed.
        lr_patience=settings["lr_patience"] if settings["schedule"] == "plateau" else None,
        stop_patience=settings["early_stopping_patience"] if settings["schedule"] == "plateau" else None)
    state = training.RunState(run_dir, plateau, write=chief)
    if chief:
        state.clean()
    multiworker = settings["strategy"] == "multiworker"
    # Every worker resumes from the run directory it can read (shared storage); with --fresh the
    # chief discards the run and the others start afresh with it.
    resumed = state.load() if chief or not args.fresh else None
    if multiworker:
        distributed.agree(strategy, resumed["epoch"] + 1 if resumed else 0, "the epoch to resume after")
    saved = config.load_run_config(run_dir) if resumed else None
    if resumed:
        # Before any data is generated or read ("auto" resolves against the tree, checked below).
        check_same_run(run_dir, saved, {k: v for k, v in settings.items() if v != "auto"})
        if resumed["finished"] or (not settings["iterations"] and resumed["epoch"] + 1 >= settings["epochs"]):
            why = resumed["plateau"].get("stopped")
            print(f"run in {run_dir} already finished after epoch {resumed['epoch'] + 1}"
                  + (f": stopped early, {why}" if why else "") + f"; best {training.MONITOR} {resumed['best']:.4f}. "
                  + ("Pass --fresh to train again." if why or settings["iterations"]
                     else "Pass --fresh to train again, or more --epochs to continue."))
            return {"history": state.history, "best": state.best, "initial_epoch": resumed["epoch"] + 1}

    tree = data_tree(settings, progress=args.verbose > 0)
    settings["train_split"] = resolve_train_split(settings, tree)
    settings.update(describe_data(tree, settings["train_split"]))
    steps, settings["epochs"], total_steps = schedule_length(settings, settings["num_train_images"])
    if resumed:
        check_same_run(run_dir, saved, settings)  # the data too: tree, classes, image counts
        settings["dataset_class_weights"] = saved.get("dataset_class_weights")
        print(f"resuming {run_dir} after epoch {resumed['epoch'] + 1} (best {training.MONITOR} {resumed['best']:.4f})")
    print(f"data: {tree.root} ({tree.kind}, {tree.classes.num_classes} classes), {settings['num_train_images']} "
          f"{settings['train_split']}, {settings['num_val_images']} val, {settings['num_test_images']} test images")
    print("splits: " + ", ".join(f"{subset} from {r['from']} ({r['count']})" for subset, r in settings["splits"].items()))
    pixel_counts = pipeline.check_files(tree.pairs(settings["train_split"]), tree.classes, "training files",
                                        progress=args.verbose > 0)
    warn_empty_classes(pixel_counts, tree.classes.names)
    pipeline.check_files(tree.pairs("val"), tree.classes, "validation files", progress=args.verbose > 0)
    if not resumed:
        if settings["class_weights"] == "dataset":
            settings["dataset_class_weights"] = losses.dataset_class_weights(pixel_counts)
        if chief:
            atomic.write_text(run_dir / config.RUN_CONFIG, json.dumps(settings, indent=2))

    initial_epoch = resumed["epoch"] + 1 if resumed else 0
    # A resumed run continues the augmentation stream elsewhere rather than replaying epoch 1's.
    train_ds, val_ds = datasets(settings, tree, seed=settings["seed"] + initial_epoch)
    with strategy.scope():
        if resumed:
            trained = training.load_checkpoint(state.last_path)
            model = inference_model(trained)
            extended = training.extend_schedule(trained.optimizer, total_steps)
            if extended:
                print(f"resuming with a longer run: {extended}")
        else:
            trained, model = build_model(settings, tree.classes.num_classes, total_steps)
    trained.jit_compile = settings["xla"]  # not part of a saved model's compile config
    state.best_model = model
    # --verbose 1: one line per epoch (EpochProgress); 2: Keras's own output; 0: nothing.
    # (Keras's own output belongs to fit, which multi-worker runs do not use: there 2 prints as 1.)
    progress = args.verbose == 1 or (args.verbose == 2 and multiworker)
    callbacks = [state] + ([training.EpochProgress(settings["epochs"], steps)] if progress else [])
    if settings["iterations"]:
        callbacks.append(training.IterationLimit(settings["iterations"]))
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False))
    if multiworker:  # Keras 3's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585)
        distributed.fit(strategy, trained, train_ds, val_ds, epochs=settings["epochs"], initial_epoch=initial_epoch,
                        steps_per_epoch=steps, callbacks=callbacks, num_classes=tree.classes.num_classes)
        if args.save_worker_model and not chief:
            training.atomic_save_model(trained, args.save_worker_model)
    else:
        trained.fit(train_ds, validation_data=val_ds, epochs=settings["epochs"], initial_epoch=initial_epoch,
                    steps_per_epoch=steps, callbacks=callbacks, verbose=2 if args.verbose == 2 else 0, shuffle=False)

    if state.diverged:
        kept = (f"The last good state (epoch {state.history[-1]['epoch']}) is kept in {state.last_path.parent}"
                if state.history else "No epoch finished, so nothing was kept")
        raise SystemExit(f"error: training diverged: {state.diverged}. {kept}; try a lower --lr, or --fresh to "
                         f"start over.")
    best_row = max(state.history, key=lambda r: r.get(training.MONITOR, -1.0)) if state.history else {}
    summary = ", ".join(f"{k} {best_row[k]:.4f}" for k in ("val_pixel_accuracy", "val_mean_accuracy",
                                                          "val_mean_iou") if k in best_row)
    saved_to = state.best_path if chief else "the chief's run directory (this worker writes nothing there)"
    print(f"best epoch {best_row.get('epoch')}: {summary}; model saved to {saved_to}")
    return {"history": state.history, "best": state.best, "initial_epoch": initial_epoch}


if __name__ == "__main__":
    cli.run(main, parse_args)
