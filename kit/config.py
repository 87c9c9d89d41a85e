"""One declaration of a run: every setting once, with its default and help; presets; resolution.

    from kit import config
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, config.TRAIN)      # flags, help texts with their defaults
    settings = config.resolve(parser.parse_args(), config.TRAIN)

Precedence, lowest first: the declared default, the presets in the order given (`--demo`),
a resumed run's saved config.json, and flags given on the command line. Flags default to None
in argparse, so an explicit flag is always told apart from a default.

A run directory's `config.json` holds the resolved settings plus what the data turned out to
be (DATA_KEYS: the tree, its classes, the number of images per split); evaluate.py,
export.py and predict.py read a run back through `load_run_config`. The settings marked
`identity` (and DATA_KEYS) make a run "the same run": a resumed run may not change them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kit import data
from kit import synthetic
from kit.errors import ConfigError  # noqa: F401  (config.ConfigError is how the scripts name it)

RUN_CONFIG = "config.json"
# The run directory's other files that more than one script reads: the model evaluate.py and
# export.py take by default, train.py's per-epoch log and evaluate.py's scores (compare.py reads
# both), and the log column that picks the best model.
RUN_BEST_MODEL = "best.keras"
RUN_LOG = "log.csv"
RUN_METRICS = "metrics.json"
MONITOR = "val_mean_iou"


@dataclass(frozen=True)
class Setting:
    """A command-line setting: default, help, parsing, and whether it makes a run what it is."""

    default: Any
    help: str
    type: Callable | None = None
    choices: tuple | None = None
    flag: bool = False  # a switch (store_true)
    identity: bool = False  # changing it on resume would make another run
    metavar: str | None = None
    nargs: int | str | None = None
    const: Any = None  # the value of a bare flag, with nargs="?"


TRAIN: dict[str, Setting] = {
    # data
    "dataset": Setting("voc", "voc: a data set at --data-dir (VOC 2012, a CVAT or labelme export, ADE20K, "
                       "Cityscapes, CamVid, image + mask folders, Roboflow: see --format; VOC 2012 is downloaded "
                       "into the default data/ if no data set is there); synthetic: generated",
                       choices=("voc", "synthetic"), identity=True),
    "data_dir": Setting("data", "where the data tree is (or, for synthetic data, goes)", metavar="PATH"),
    # Not an identity key: the format found is, as data_kind (DATA_KEYS).
    "format": Setting("auto", "the data set's layout at --data-dir: auto recognises it; or force one (see "
                      "docs/data.md)", choices=("auto", *data.FORMATS)),
    "labelmap": Setting(None, "a CVAT labelmap.txt declaring the classes of a VOC-layout tree (or of image + mask "
                        "folders)", metavar="FILE",
                        identity=True),
    "train_split": Setting("train", "train (train.txt), trainaug (VOC train + SBD, from download_data.py --sbd), "
                           "or auto: trainaug when the tree has it", choices=("train", "trainaug", "auto"),
                           identity=True),
    "val_fraction": Setting(data.DEFAULT_VAL_FRACTION, "held-out fraction when a tree has one list instead of train.txt + val.txt "
                            "(half validation, half test)", type=float, identity=True),
    "num_train": Setting(200, "synthetic data: training images", type=int, identity=True),
    "num_val": Setting(100, "synthetic data: validation images (halved into val and test)", type=int, identity=True),
    "synthetic_kind": Setting("objects", "synthetic data: objects (shapes on a textured background) or driving "
                              "(a floor with obstacles seen from the simulated vehicle's camera, what "
                              "simulate.py drives in)", choices=synthetic.KINDS),  # data_root tells kinds apart
    # model
    "input_size": Setting(384, "square crop fed to the model", type=int, identity=True),
    "resize_before_crop": Setting(444, "size to enlarge to before a random crop", type=int, identity=True),
    "backbone": Setting("resnet50", "backbone network", choices=("resnet50", "mobilenetv2"), identity=True),
    "backbone_weights": Setting("imagenet", "imagenet, none, or a path to a Keras weights file", identity=True),
    "output_stride": Setting(16, "backbone output stride", type=int, choices=(16, 8), identity=True),
    "multi_grid": Setting(False, "conv5 rates x (1, 2, 4)", flag=True, identity=True),
    "aspp_filters": Setting(256, "channels of each ASPP branch", type=int, identity=True),
    "bn_momentum": Setting(None, "batch-norm moving-average momentum (none: Keras's)", type=float, identity=True),
    # training recipe
    "recipe": Setting("chapter", "chapter: Adam, plateau, 384 px crops; deeplabv3: the papers' SGD + poly, scale "
                      "jitter 0.5-2.0, 512 px crops, trainaug when present, 30k iterations (see docs/training.md)",
                      choices=("chapter", "deeplabv3"), identity=True),
    "batch_size": Setting(8, "global batch size", type=int, identity=True),
    "epochs": Setting(25, "epochs to train; more on a finished run continues it (derived from --iterations "
                      "when that is given)", type=int),
    "iterations": Setting(None, "train for this many optimizer steps, the way the references count (epochs "
                          "derived)", type=int, identity=True),
    "steps_per_epoch": Setting(None, "steps per epoch (none: one pass over the training images)", type=int),
    "optimizer": Setting("adam", "adam, sgd (with --momentum), or adamw (decoupled weight decay)",
                         choices=("adam", "sgd", "adamw"), identity=True),
    "lr": Setting(None, "base learning rate (none: the recipe's; deeplabv3 scales 0.01 by batch size / 16)",
                  type=float, identity=True),
    "momentum": Setting(0.9, "SGD momentum", type=float, identity=True),
    "weight_decay": Setting(0.0, "weight decay on conv kernels only (never batch norm or biases): L2 for adam and "
                            "sgd, as PyTorch's weight_decay; decoupled for adamw", type=float, identity=True),
    "schedule": Setting("plateau", "plateau: cut by 10 when val_loss stalls (the chapter); poly, cosine or "
                        "constant: per optimizer step", choices=("plateau", "poly", "cosine", "constant"),
                        identity=True),
    "poly_power": Setting(0.9, "power of the poly schedule", type=float, identity=True),
    "warmup_steps": Setting(0, "linear warm-up steps (poly, cosine, constant)", type=int, identity=True),
    "scale_range": Setting(None, "random scale jitter: shorter side s x --resize-before-crop, s in [LO, HI], "
                           "padded with the ignore label where smaller than the crop", type=float, nargs=2,
                           metavar=("LO", "HI"), identity=True),
    "aux_loss": Setting(0.0, "weight of an auxiliary FCN head on conv4 (ResNet-50), training only; a bare "
                        "--aux-loss means 0.4", type=float, nargs="?", const=0.4, metavar="W", identity=True),
    "loss": Setting("ce_dice", "training loss", choices=("ce_dice", "ce", "dice"), identity=True),
    "class_weights": Setting("image", "pixel weights by class frequency: image (the chapter's), batch, dataset "
                             "(measured once over the training masks) or none (see docs/training.md)",
                             choices=("image", "batch", "dataset", "none"), identity=True),
    "freeze_bn": Setting(False, "keep every batch norm in inference mode (fine-tuning with small batches)",
                         flag=True, identity=True),
    "mixed_precision": Setting(False, "mixed_float16 on GPU, mixed_bfloat16 on CPU", flag=True, identity=True),
    "xla": Setting(False, "compile the training step with XLA (jit_compile): for GPUs; 1.75-1.85x slower on "
                   "the CPUs measured", flag=True),
    "strategy": Setting("auto", "auto: all local GPUs if several; mirrored; multiworker (TF_CONFIG)",
                        choices=("auto", "mirrored", "multiworker")),
    "worker_timeout": Setting(300.0, "--strategy multiworker: seconds a worker waits for the others, at start-up and "
                              "at each exchange, before it stops with an error", type=float, metavar="SECONDS"),
    "seed": Setting(0, "seed for weights, shuffling and augmentation", type=int, identity=True),
    "early_stopping_patience": Setting(6, "epochs without val_loss improvement before stopping", type=int),
    "lr_patience": Setting(3, "epochs without val_loss improvement before the learning rate is cut by 10", type=int),
    # the run
    "run_dir": Setting("eval/deeplabv3", "outputs: config, log, checkpoints", metavar="PATH"),
}

# How evaluate.py and predict.py run a model (inference.Predictor's arguments).
INFERENCE: dict[str, Setting] = {
    "tta": Setting("none", "test-time augmentation: flip adds each image mirrored (probabilities averaged)",
                   choices=("none", "flip")),
    "scales": Setting("1", "comma-separated input scales whose probabilities are averaged, e.g. 0.75,1,1.25"),
    "mode": Setting("auto", "whole images, sliding windows, or auto: windows only for images over --max-pixels",
                    choices=("whole", "slide", "auto")),
    "crop_size": Setting(513, "sliding-window size", type=int),
    "stride": Setting(341, "sliding-window stride", type=int),
    "max_pixels": Setting(2048 * 2048, "auto mode: images with more pixels are run in windows", type=int),
}


def predictor_options(settings: dict) -> dict:
    """inference.Predictor's keyword arguments from resolved INFERENCE settings."""
    try:
        scales = [float(v) for v in str(settings["scales"]).split(",")]
    except ValueError:
        raise ConfigError(f"--scales takes comma-separated numbers, got {settings['scales']!r}") from None
    if any(v <= 0 for v in scales):
        raise ConfigError(f"--scales must be positive, got {settings['scales']!r}")
    if not 0 < settings["stride"] <= settings["crop_size"]:
        raise ConfigError(f"--stride must be between 1 and --crop-size {settings['crop_size']}, got {settings['stride']}")
    return {"flip": settings["tta"] == "flip", "scales": scales, "mode": settings["mode"],
            "crop_size": settings["crop_size"], "stride": settings["stride"], "max_pixels": settings["max_pixels"]}


# What the data turned out to be: recorded in config.json by train.py, and part of a run's identity.
DATA_KEYS = ("data_root", "data_kind", "classes", "num_train_images", "num_val_images", "num_test_images", "splits")
# Identity keys older versions did not record: compared only when the saved run has them.
RECORDED_SINCE = frozenset({"splits"})
IDENTITY_KEYS = tuple(name for name, s in TRAIN.items() if s.identity) + DATA_KEYS

PRESETS: dict[str, dict[str, Any]] = {
    # The chapter's experiment is the declared defaults.
    "chapter": {},
    # DeepLab v3's published recipe (Chen et al. 2017; mmsegmentation and torchvision alike).
    "deeplabv3": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly",
                  "poly_power": 0.9, "scale_range": [0.5, 2.0], "input_size": 512, "resize_before_crop": 512,
                  "batch_size": 16, "iterations": 30000, "train_split": "auto"},
    # An offline demo that finishes in minutes on 2 CPU cores, with either recipe.
    "demo": {"dataset": "synthetic", "run_dir": "eval/demo", "input_size": 128, "resize_before_crop": 160,
             "epochs": 15, "backbone": "mobilenetv2", "backbone_weights": "none", "aspp_filters": 64,
             "bn_momentum": 0.9, "batch_size": 8},
    "demo+chapter": {"lr": 1e-3},
    "demo+deeplabv3": {"resize_before_crop": 128, "iterations": 375},
}
# Base learning rates when --lr is not given: the chapter's Adam rate, and the papers' SGD rate
# for a batch of 16, scaled linearly with the batch size (Goyal et al. 2017).
BASE_LR = {"chapter": (1e-4, None), "deeplabv3": (0.01, 16)}


def _describe(value) -> str:
    return "none" if value is None else str(value)


def add_arguments(parser, settings: dict[str, Setting], presets: tuple[str, ...] = ()) -> None:
    """Add a `--kebab-case` flag per setting; its help gives the default (and each preset's)."""
    for name, s in settings.items():
        shown = [f"default {_describe(s.default)}"]
        shown += [f"--{p}: {_describe(PRESETS[p][name])}" for p in presets if name in PRESETS[p]]
        kwargs: dict[str, Any] = {"default": None, "help": f"{s.help} ({'; '.join(shown)})"}
        if s.flag:
            kwargs["action"] = "store_true"
        else:
            kwargs.update({k: v for k, v in (("type", s.type), ("choices", s.choices), ("metavar", s.metavar),
                                             ("nargs", s.nargs), ("const", s.const)) if v is not None})
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def explicit(args, settings: dict[str, Setting]) -> dict[str, Any]:
    """The settings given on the command line (argparse leaves the others None)."""
    return {k: v for k, v in vars(args).items() if k in settings and v is not None}


def presets_for(args) -> tuple[str, ...]:
    """The presets a train.py command line asks for, in the order they apply."""
    recipe = getattr(args, "recipe", None) or TRAIN["recipe"].default
    return (recipe, "demo", f"demo+{recipe}") if getattr(args, "demo", False) else (recipe,)


def resolve(args, settings: dict[str, Setting], presets: tuple[str, ...] = (), saved: dict | None = None) -> dict:
    """Defaults < presets (in order) < saved run config < explicit flags; then derived values.

    Derived: the learning rate when none is given (BASE_LR of the recipe, scaled by batch size).
    """
    resolved = {name: s.default for name, s in settings.items()}
    for preset in presets:
        resolved.update({k: v for k, v in PRESETS.get(preset, {}).items() if k in settings})
    if saved:
        resolved.update({k: v for k, v in saved.items() if k in settings})
    resolved.update(explicit(args, settings))
    if "lr" in resolved and resolved["lr"] is None:
        base, per_batch = BASE_LR[resolved["recipe"]]
        resolved["lr"] = base * resolved["batch_size"] / per_batch if per_batch else base
    check(resolved)
    return resolved


def check_warmup(schedule: str | None, warmup_steps: int | None) -> None:
    """ConfigError for a warm-up on the plateau schedule (kit.training.learning_rate asks too)."""
    if warmup_steps and schedule == "plateau":
        raise ConfigError("--warmup-steps needs --schedule poly, cosine or constant (plateau changes the rate "
                          "between epochs)")


def check(settings: dict) -> None:
    """ConfigError for values that cannot work, naming the flag."""
    if settings.get("val_fraction") is not None and not 0.0 < settings["val_fraction"] < 1.0:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {settings['val_fraction']}")
    for name in ("batch_size", "input_size", "resize_before_crop", "iterations", "epochs", "steps_per_epoch"):
        value = settings.get(name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    scale = settings.get("scale_range")
    if scale is not None and not 0.0 < scale[0] <= scale[1]:
        raise ConfigError(f"--scale-range needs 0 < LO <= HI, got {scale}")
    check_warmup(settings.get("schedule"), settings.get("warmup_steps"))
    if settings.get("aux_loss") and settings.get("backbone") != "resnet50":
        raise ConfigError("--aux-loss needs --backbone resnet50: the auxiliary head reads ResNet-50's conv4")
    if settings.get("xla") and settings.get("strategy") == "multiworker":
        raise ConfigError("--xla is not supported with --strategy multiworker (its training loop is not "
                          "compiled with XLA); drop --xla")
    if settings.get("lr") is not None and settings["lr"] <= 0:
        raise ConfigError(f"--lr must be positive, got {settings['lr']}")
    for name, low in (("num_train", 1), ("num_val", 2), ("aspp_filters", 1)):
        value = settings.get(name)
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    # Ranges outside which training runs but learns nothing sensible (or the rate is inf).
    for name, low, high, closed in (("momentum", 0.0, 1.0, False), ("bn_momentum", 0.0, 1.0, False),
                                    ("weight_decay", 0.0, None, True)):
        value = settings.get(name)
        if value is not None and (value < low or (high is not None and value >= high)):
            span = f"in [{low:g}, {high:g})" if high is not None else f">= {low:g}"
            raise ConfigError(f"--{name.replace('_', '-')} must be {span}, got {value}")
    if settings.get("poly_power") is not None and settings["poly_power"] <= 0:
        raise ConfigError(f"--poly-power must be positive (0.9 is DeepLab's), got {settings['poly_power']}")
    size, before = settings.get("input_size"), settings.get("resize_before_crop")
    if size and before and before < size and settings.get("scale_range") is None:
        raise ConfigError(f"--resize-before-crop {before} is smaller than --input-size {size}: the {size} px crop "
                          f"is cut from the image resized to {before} px; give at least {size}")


def changed_identity(saved: dict, current: dict) -> dict:
    """{key: (saved, now)} for identity keys whose values differ (keys absent on one side count)."""
    return {k: (saved.get(k), current.get(k)) for k in IDENTITY_KEYS
            if k in current and (k in saved or k not in RECORDED_SINCE)
            and _normal(saved.get(k)) != _normal(current.get(k))}


def _normal(value):
    """JSON round-trips turn tuples into lists; compare as JSON would store them."""
    return json.loads(json.dumps(value))


def load_run_config(run_dir: str | Path) -> dict:
    """A run's config.json, or ConfigError saying what is wrong with the run directory."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_CONFIG
    if not run_dir.is_dir():
        raise ConfigError(f"no run directory {run_dir}; train one first (python train.py --run-dir {run_dir}) "
                          f"or pass --run-dir")
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no {RUN_CONFIG}: it is not a train.py run directory")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is not a run config (expected a JSON object)")
    return saved
