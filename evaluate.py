"""Score a trained model on a held-out split of its run's data and draw what it does.

    python evaluate.py                              # eval/deeplabv3/best.keras on the test split
    python evaluate.py --run-dir eval/demo          # the demo's model on its synthetic data
    python evaluate.py --subset full-val            # all of VOC val: the protocol published numbers use
    python evaluate.py --tta flip --scales 0.75,1,1.25

The data and classes are the run's own (its config.json); nothing is downloaded or generated.
The test split is the data's test.txt, or else the second half of the shuffled validation list
(data.splits_of); a run refuses to score a split that is not the one it recorded at training
(the lists changed since). By default each image is scored at its original resolution. Writes metrics.json, a per-class
Markdown table, a confusion-matrix figure, a prediction grid, a navigation figure (the first
--num-navigation images: cost map and heading, --navigation profile) and training curves to
--out-dir.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kit import runtime

runtime.start()  # before TensorFlow loads: a quiet start-up unless --debug (see kit/runtime.py)

from tqdm import tqdm  # noqa: E402

from kit import atomic  # noqa: E402
from kit import cli  # noqa: E402
from kit import compare  # noqa: E402
from kit import config  # noqa: E402
from kit import data  # noqa: E402
from kit import figures  # noqa: E402
import metrics  # noqa: E402
from kit import navigation  # noqa: E402
import pipeline  # noqa: E402
from kit import inference  # noqa: E402
from model import with_output_stride  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=config.TRAIN["run_dir"].default, help="the training run (its config.json "
                   "says which data and classes)")
    p.add_argument("--model", help="model file (default RUN_DIR/best.keras)")
    p.add_argument("--data-dir", help="where the run's data tree is now, if it moved (default: the run's)")
    p.add_argument("--subset", default="test", choices=data.SUBSETS,
                   help="test (default), val, full-val (all of the validation list) or train")
    p.add_argument("--resolution", choices=("original", "input"), default="original",
                   help="original: each image at its own size; input: resized to the training input size")
    p.add_argument("--input-size", type=cli.whole_number(1), help="size for --resolution input (default: the run's)")
    p.add_argument("--batch-size", type=cli.whole_number(1), default=8, help="batch size for --resolution input")
    p.add_argument("--output-stride", type=int, choices=(8, 16), help="evaluate a ResNet-50 model at this output "
                   "stride (default: the one it was trained at); 8 on a model trained at 16 is the paper's protocol")
    config.add_arguments(p, config.INFERENCE)
    p.add_argument("--num-figures", type=cli.whole_number(0), default=6, help="images in the prediction figure")
    p.add_argument("--navigation", choices=(*sorted(navigation.PROFILES), "none"), default="safe",
                   help="profile of the navigation figure (navigation.png), or none for no figure (default safe)")
    p.add_argument("--num-navigation", type=cli.whole_number(0), default=3, help="images in the navigation figure (the first "
                   "of the prediction figure's; each is run once more for its probabilities)")
    p.add_argument("--out-dir", help="where reports go (default RUN_DIR)")
    cli.add_debug_flag(p)
    return p.parse_args(argv)


def main(args) -> dict:
    run_dir = Path(args.run_dir)
    saved = config.load_run_config(run_dir)
    tree = data.tree_from_config(saved, args.data_dir)
    classes = tree.classes
    model_path = Path(args.model or run_dir / config.RUN_BEST_MODEL)
    out = Path(args.out_dir or run_dir)
    options = config.resolve(args, config.INFERENCE)
    input_size = args.input_size or saved.get("input_size", config.TRAIN["input_size"].default)

    model = inference.load_model(model_path)
    inference.check_classes(model, classes, model_path)
    trained_stride = saved.get("output_stride", config.TRAIN["output_stride"].default)
    output_stride = args.output_stride or trained_stride
    if output_stride != trained_stride:
        backbone = saved.get("backbone", config.TRAIN["backbone"].default)
        if backbone != "resnet50":
            raise config.ConfigError(f"--output-stride {output_stride}: only a ResNet-50 model can change its output "
                                     f"stride, and this run's backbone is {backbone}; leave --output-stride out")
        model = with_output_stride(model, output_stride)
        print(f"evaluating at output stride {output_stride} (trained at {trained_stride}), same weights")
    predictor = inference.Predictor(model, **config.predictor_options(options))
    tree.check_split(saved.get("splits"), args.subset)  # the split the run held out, not a reshuffled one
    pairs = tree.pairs(args.subset)
    pipeline.check_files(pairs, classes, f"{args.subset} files")
    original = args.resolution == "original"
    ds = pipeline.get_subset_tf_dataset(pairs, 1 if original else args.batch_size, 1, classes=classes,
                                        input_size=None if original else (input_size,) * 2,
                                        cache=False)  # one pass: nothing reads the images again

    cm = metrics.ConfusionMatrix(classes.num_classes)  # one matrix for the whole subset
    examples = []
    with tqdm(total=len(pairs), desc=f"evaluate {args.subset}", unit="img") as bar:
        for images, labels in ds:
            preds = predictor.masks(images)
            labels = labels.numpy()
            cm.update(labels, preds)
            for i in range(len(preds)):
                if len(examples) < args.num_figures:
                    examples.append((images[i].numpy(), labels[i], preds[i]))
            bar.update(len(preds))

    report = {**cm.report(classes.names), "num_images": len(pairs), "subset": args.subset,
              "resolution": args.resolution, **options, "output_stride": output_stride,
              "trained_output_stride": trained_stride, "slid_images": predictor.slid, "model": str(model_path),
              "model_sha256": compare.model_digest(model_path),  # compare.py: is this still the run's model?
              "data_root": str(tree.root), "classes": list(classes.names)}
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / config.RUN_METRICS, json.dumps(report, indent=2) + "\n")
    table = cm.table(classes.names)
    atomic.write_text(out / "per_class_iou.md", table)
    figures.confusion_matrix_figure(cm.matrix, out / "confusion_matrix.png", classes)
    figures.prediction_grid(examples, out / "predictions.png", classes)
    if args.navigation != "none" and args.num_navigation > 0 and examples:
        costs = navigation.class_costs_for(classes.names)
        rows = []
        for image, _, pred in examples[:args.num_navigation]:
            if image.shape[0] * image.shape[1] > predictor.max_pixels:
                continue  # a whole-image probability map of a huge photo is what slide mode avoids
            probs = predictor.probabilities(image[None])[0].numpy()  # (H, W, C), whole image
            rows.append((image, pred, navigation.navigate(probs, args.navigation, costs)))
        if rows:
            figures.navigation_figure(rows, out / "navigation.png", classes, profile=args.navigation)
    figures.training_curves(run_dir / config.RUN_LOG, out / "training_curves.png")
    if predictor.slid:
        print(f"{predictor.slid} image(s) were run in {options['crop_size']} px windows")
    print(f"{args.subset}: {len(pairs)} images at {args.resolution} resolution  pixel accuracy "
          f"{report['pixel_accuracy']:.4f}  mean accuracy {report['mean_accuracy']:.4f}  mean IoU {report['mean_iou']:.4f}")
    print(table)
    print(f"reports written to {out}")
    return report


if __name__ == "__main__":
    cli.run(main, parse_args)
