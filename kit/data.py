"""Where data lies and how a tree is laid out: the VOC layouts, a CVAT export, the class table.

    from kit import data
    tree = data.resolve_tree("~/VOCdevkit")      # finds VOC2012 in any of VOC_LAYOUTS, or a CVAT export
    tree.classes.names                            # ('background', 'aeroplane', ...) or the export's own
    pairs = tree.pairs("train")                   # [(image path, mask path), ...]
    mask = tree.classes.decode(Image.open(png), png)   # (H, W) uint8 class indices, 255 ignored

A tree is a folder with `JPEGImages/`, `SegmentationClass/` and `ImageSets/Segmentation/`
(VOC 2012, the synthetic stand-in, and CVAT's "Segmentation mask 1.1" export, which adds a
`labelmap.txt`). Its classes come from `labelmap.txt` (or `--labelmap FILE`), else VOC's 21.
Masks are decoded by colour whatever their PNG mode, so a mask whose palette was re-saved in
another order, or an RGB mask, reads the same; images are turned upright by their EXIF
orientation. The subsets come from every split list the tree gives (splits_of: train.txt,
val.txt, test.txt, trainval.txt or CVAT's default.txt), and a run records a fingerprint of
each (Tree.split_record) so a later evaluation scores the same images. Nothing here
downloads or writes.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kit import voc
from kit.errors import KitError

IMAGES_DIR = "JPEGImages"
MASKS_DIR = "SegmentationClass"
AUG_MASKS_DIR = "SegmentationClassAug"  # SBD's masks beside VOC's, as mmsegmentation lays them out
SPLITS_DIR = Path("ImageSets") / "Segmentation"
TRAINAUG_LIST = "trainaug.txt"  # in SPLITS_DIR: VOC train and SBD, written by download_data.py --sbd
LABELMAP = "labelmap.txt"
# Where a VOC 2012 tree may lie under --data-dir, in the order they are tried.
VOC_LAYOUTS = (Path("."), Path("VOC2012"), Path("VOCdevkit") / "VOC2012",
               Path("VOCtrainval_11-May-2012") / "VOCdevkit" / "VOC2012")
# Subsets by exact name: val and test are the two halves of the validation list (shuffled with
# SPLIT_SEED); full-val is all of it, the protocol published VOC numbers use.
SUBSETS = ("train", "trainaug", "val", "test", "full-val")
SPLIT_SEED = 2012
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# labelmap entries with these names mark pixels to ignore (255), not a class.
IGNORE_NAMES = frozenset({"ignore", "void", "unlabeled", "unlabelled", "dontcare"})
DEFAULT_VAL_FRACTION = 0.2


class DataError(KitError, ValueError):
    """A data tree, split list or file that cannot be used; the message names it and says what to do."""


Colour = tuple[int, int, int]


def _code(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colours to (...) int64 24-bit codes, for lookups."""
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass(frozen=True)
class ClassTable:
    """A data set's classes: names and colours by index, and the colours that mean "ignore" (255).

    Index c of `names` is class c in masks, logits and metrics; `colours[c]` is how masks and
    figures draw it.
    """

    names: tuple[str, ...]
    colours: tuple[Colour, ...]
    ignore_colours: tuple[Colour, ...] = ()
    _lookup: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.names:
            raise DataError("a class table needs at least one class")
        if len(self.names) != len(self.colours):
            raise DataError(f"{len(self.names)} class names but {len(self.colours)} colours")
        if len(self.names) > voc.IGNORE_LABEL:
            raise DataError(f"{len(self.names)} classes do not fit below the ignore label {voc.IGNORE_LABEL}")
        seen: dict[Colour, str] = {}
        for name, colour in [*zip(self.names, self.colours), *(("ignore", c) for c in self.ignore_colours)]:
            if len(colour) != 3 or not all(0 <= int(v) <= 255 for v in colour):
                raise DataError(f"class {name!r} has colour {colour}, expected three values in 0..255")
            if tuple(colour) in seen:
                raise DataError(f"classes {seen[tuple(colour)]!r} and {name!r} share the colour {tuple(colour)}")
            seen[tuple(colour)] = name
        # Sorted colour codes and what each means (class index or IGNORE_LABEL), for decoding.
        codes = {int(_code(np.array(c))): i for i, c in enumerate(self.colours)}
        codes.update({int(_code(np.array(c))): voc.IGNORE_LABEL for c in self.ignore_colours})
        order = sorted(codes)
        object.__setattr__(self, "_lookup", {"codes": np.array(order, np.int64),
                                             "labels": np.array([codes[k] for k in order], np.int16)})

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def voc(cls) -> "ClassTable":
        """PASCAL VOC 2012: 21 classes in the devkit's colours, (224, 224, 192) ignored."""
        return _VOC_TABLE

    @classmethod
    def from_labelmap(cls, path: str | Path) -> "ClassTable":
        """Parse CVAT's `labelmap.txt` ("name:r,g,b:parts:actions" per line, `#` comments).

        Classes take the file's order; entries named like IGNORE_NAMES mark ignored colours.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is not a name
        except OSError as err:
            raise DataError(f"cannot read label map {path}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise DataError(f"label map {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        names, colours, ignore = [], [], []
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split(":")
            try:
                colour = tuple(int(v) for v in parts[1].split(","))
                if len(colour) != 3:
                    raise ValueError
            except (IndexError, ValueError):
                raise DataError(f"{path}:{number}: expected 'name:r,g,b::', got {line.strip()!r}") from None
            name = parts[0].strip()
            if name.lower().replace(" ", "").replace("'", "") in IGNORE_NAMES:
                ignore.append(colour)
            else:
                names.append(name)
                colours.append(colour)
        if not names:
            raise DataError(f"{path} declares no classes")
        if len(set(names)) != len(names):
            raise DataError(f"{path} names a class twice: {sorted({n for n in names if names.count(n) > 1})}")
        return cls(tuple(names), tuple(colours), tuple(ignore))

    def to_json(self) -> dict:
        return {"names": list(self.names), "colours": [list(c) for c in self.colours],
                "ignore_colours": [list(c) for c in self.ignore_colours]}

    @classmethod
    def from_json(cls, value: dict) -> "ClassTable":
        return cls(tuple(value["names"]), tuple(tuple(c) for c in value["colours"]),
                   tuple(tuple(c) for c in value.get("ignore_colours", ())))

    def palette(self) -> np.ndarray:
        """(256, 3) uint8: class c's colour at index c, the ignore colour at 255 (VOC: the devkit's)."""
        if self == _VOC_TABLE:
            return voc.PALETTE
        palette = np.zeros((256, 3), np.uint8)
        palette[: self.num_classes] = self.colours
        palette[voc.IGNORE_LABEL] = self.ignore_colours[0] if self.ignore_colours else voc.PALETTE[voc.IGNORE_LABEL]
        return palette

    def colourize(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) class indices (255 ignored) -> (H, W, 3) uint8 colours."""
        # np.take rather than fancy indexing: a quarter of the time (0.5 vs 1.9 ms at 256x256),
        # which counts on the video writer's thread.
        return np.take(self.palette(), np.asarray(mask, dtype=np.uint8), axis=0)

    def save_mask(self, mask: np.ndarray, path: str | Path) -> None:
        """Write (H, W) class indices as a palettized PNG in this table's colours."""
        image = Image.fromarray(np.asarray(mask, dtype=np.uint8))  # mode "L"
        image.putpalette(self.palette().reshape(-1).tolist())  # "L" -> "P", indices unchanged
        image.save(path, format="PNG")

    def _labels_of(self, colours: np.ndarray) -> np.ndarray:
        """(...) int16 label of each (..., 3) colour: class index, 255 (ignored), or -1 (unknown)."""
        codes = _code(colours)
        table = self._lookup
        pos = np.clip(np.searchsorted(table["codes"], codes), 0, len(table["codes"]) - 1)
        return np.where(table["codes"][pos] == codes, table["labels"][pos], np.int16(-1))

    def decode(self, image: Image.Image, path: str | Path = "mask") -> np.ndarray:
        """A label image to (H, W) uint8 class indices, 255 where ignored, by colour.

        P: each index through the file's own palette (a palette saved in another order still
        decodes right); RGB / RGBA: the pixel's colour (alpha is not used); L, I, I;16: the
        values are class indices already (0..C-1, or 255). Any other value is a DataError
        naming the file, the colour (or value) and on how many pixels it occurs.
        """
        mode = image.mode
        if mode == "P":
            index = np.asarray(image)  # (H, W) uint8 palette indices
            raw = np.asarray(image.getpalette() or [], np.uint8)
            file_palette = np.zeros((256, 3), np.uint8)
            file_palette[: len(raw) // 3] = raw[: len(raw) // 3 * 3].reshape(-1, 3)[:256]
            lut = self._labels_of(file_palette)  # (256,): what each palette entry means
            labels = lut[index]
            if (labels < 0).any():
                used, counts = np.unique(index[labels < 0], return_counts=True)
                raise self._unknown(path, [tuple(int(v) for v in file_palette[i]) for i in used], counts)
            return labels.astype(np.uint8)
        if mode in ("RGB", "RGBA"):
            rgb = np.asarray(image.convert("RGB"))  # (H, W, 3)
            labels = self._labels_of(rgb)
            if (labels < 0).any():
                colours, counts = np.unique(rgb[labels < 0], axis=0, return_counts=True)
                raise self._unknown(path, [tuple(int(v) for v in c) for c in colours], counts)
            return labels.astype(np.uint8)
        if mode in ("L", "I", "I;16", "I;16B", "I;16L"):
            values = np.asarray(image).astype(np.int64)
            # Values are class indices, and 255 is ignored; but a grey value that is a declared
            # class colour means that class (a binary mask saved as 0/255 with a class coloured
            # white): a declared class wins over the ignore value.
            grey = self._labels_of(np.repeat(np.arange(256)[:, None], 3, axis=1))  # (256,) label of (v, v, v)
            for v in range(self.num_classes, 256):
                if grey[v] >= 0 and grey[v] != voc.IGNORE_LABEL and (values == v).any():
                    values = np.where(values == v, int(grey[v]), values)
            bad = (values >= self.num_classes) & (values != voc.IGNORE_LABEL) | (values < 0)
            if bad.any():
                found, counts = np.unique(values[bad], return_counts=True)
                detail = ", ".join(f"{v} on {n} pixels" for v, n in zip(found[:5].tolist(), counts[:5].tolist()))
                raise DataError(f"mask {path}: values {found[:5].tolist()} ({detail}) are not class indices "
                                f"0..{self.num_classes - 1} or {voc.IGNORE_LABEL}")
            return values.astype(np.uint8)
        raise DataError(f"mask {path}: unsupported PNG mode {mode!r}; expected P, RGB, RGBA or L")

    def _unknown(self, path, colours: list[Colour], counts) -> DataError:
        detail = ", ".join(f"{c} on {int(n)} pixels" for c, n in list(zip(colours, counts))[:5])
        more = f" and {len(colours) - 5} more colours" if len(colours) > 5 else ""
        return DataError(f"mask {path}: colour {detail}{more} is in no class of this data set "
                         f"({self.num_classes} classes: {', '.join(self.names[:8])}"
                         f"{', ...' if self.num_classes > 8 else ''}); fix the mask, or declare the colour "
                         f"in the label map (--labelmap)")


_VOC_TABLE = ClassTable(voc.CLASS_NAMES, tuple(tuple(int(v) for v in c) for c in voc.PALETTE[: voc.NUM_CLASSES]),
                        (tuple(int(v) for v in voc.PALETTE[voc.IGNORE_LABEL]),))


def rgb_array(image: Image.Image, dtype=np.uint8) -> np.ndarray:
    """(H, W, 3) RGB in [0, 255] of any image PIL reads, as `dtype`: grayscale, palettized and
    CMYK images are converted; 16-bit ones (modes I;16, I) are scaled to 8-bit range
    (65535 -> 255, rounded for integer dtypes), not clipped, which would turn them white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.clip(np.asarray(image, dtype=np.float32) / 257.0, 0.0, 255.0)
        if np.issubdtype(dtype, np.integer):
            grey = np.rint(grey)
        return np.repeat(grey.astype(dtype)[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=dtype)


def read_rgb(path: str | Path, dtype=np.uint8) -> np.ndarray:
    """(H, W, 3) RGB of an image file (rgb_array), turned upright by its EXIF orientation.

    Phones store a portrait photo as landscape pixels plus an orientation tag; viewers and
    annotation tools (CVAT) show and label the upright image, so training, scoring and
    prediction must see that one too.
    """
    with Image.open(path) as im:
        return rgb_array(ImageOps.exif_transpose(im), dtype)


def exif_rotates(path: str | Path) -> bool:
    """Whether an image's EXIF orientation turns it by 90 degrees (values 5-8), swapping width and height."""
    try:
        with Image.open(path) as im:
            return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # 0x0112: the Orientation tag
    except Exception:  # noqa: BLE001 - only a hint for an error message about this file
        return False


def read_ids(listing: Path) -> list[str]:
    """Ids of a split list, one per line, in file order, duplicates dropped.

    The id is the whole line without its surrounding blanks: CVAT and file managers write
    names with spaces ("frame_000 copy"). A UTF-8 byte-order mark (Notepad's) is not part of
    the first id.
    """
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise DataError(f"cannot read split list {listing}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"split list {listing} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def shuffled(ids: list[str]) -> list[str]:
    """`ids` in the fixed SPLIT_SEED order, the same on every run and machine."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
    return [ids[i] for i in order]


@dataclass(frozen=True)
class Splits:
    """The ids of each subset of a tree, and which list each came from (said on start-up and
    recorded in config.json)."""

    train: list[str]
    full_val: list[str]  # the whole validation list
    val: list[str]
    test: list[str]
    origin: dict[str, str]  # subset -> "train.txt", "half of val.txt", "held out from train.txt (20%)"...

    def ids(self, subset: str) -> list[str]:
        return {"train": self.train, "full-val": self.full_val, "val": self.val, "test": self.test}[subset]


def _hold_out(ids: list[str], val_fraction: float, listing: Path) -> tuple[list[str], list[str]]:
    """(rest, held out) of `ids` in the fixed SPLIT_SEED order: the last round(n * val_fraction)
    ids, at least 2, are held out."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    ids = shuffled(ids)
    n_val = max(2, round(len(ids) * val_fraction))
    if len(ids) - n_val < 1:
        raise DataError(f"{listing} lists {len(ids)} ids: too few to keep {n_val} for validation and train on the rest")
    return ids[:-n_val], ids[-n_val:]


def splits_of(splits_dir: Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> Splits:
    """The subsets of a tree's split lists (ImageSets/Segmentation), using every list it gives.

    train: train.txt; else the one list there (CVAT's default.txt, or trainval.txt) less what
    validation takes. Validation: val.txt; else trainval.txt's ids not in train.txt (VOC's
    meaning of trainval); else held out from the training list by `val_fraction` with the fixed
    seed. test: test.txt; else val and test are the two halves of the shuffled validation list.
    """
    lists = {name: splits_dir / f"{name}.txt" for name in ("train", "val", "test", "trainval", "default")}
    have = {name for name, path in lists.items() if path.is_file()}
    percent = f"{val_fraction:.0%}"
    if "train" in have:
        train, origin = read_ids(lists["train"]), {"train": "train.txt"}
        if "val" in have:
            full_val, origin["full-val"] = read_ids(lists["val"]), "val.txt"
        elif "trainval" in have and [i for i in read_ids(lists["trainval"]) if i not in set(train)]:
            full_val = [i for i in read_ids(lists["trainval"]) if i not in set(train)]
            origin["full-val"] = "trainval.txt less train.txt"
        else:
            train, full_val = _hold_out(train, val_fraction, lists["train"])
            origin.update({"train": "train.txt less validation", "full-val": f"held out from train.txt ({percent})"})
    else:
        single = next((name for name in ("default", "trainval") if name in have), None)
        if single is None:
            found = sorted(p.name for p in splits_dir.glob("*.txt")) if splits_dir.is_dir() else []
            raise DataError(f"{splits_dir} has no train.txt and no single list (default.txt or trainval.txt) to "
                            f"split; found {found or 'nothing'}")
        train, full_val = _hold_out(read_ids(lists[single]), val_fraction, lists[single])
        origin = {"train": f"{single}.txt less validation", "full-val": f"held out from {single}.txt ({percent})"}
    if "test" in have:
        test, val = read_ids(lists["test"]), full_val
        origin.update({"val": origin["full-val"], "test": "test.txt"})
    else:
        mixed = shuffled(full_val)
        val, test = mixed[: len(mixed) // 2], mixed[len(mixed) // 2:]
        origin.update({"val": f"half of {origin['full-val']}", "test": f"other half of {origin['full-val']}"})
    return Splits(train, full_val, val, test, origin)


def split_lists(splits_dir: Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> tuple[list[str], list[str]]:
    """(training ids, validation-list ids) of a tree's ImageSets/Segmentation folder (splits_of)."""
    splits = splits_of(splits_dir, val_fraction)
    return splits.train, splits.full_val


def subset_ids(splits_dir: Path, subset: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> list[str]:
    """Ids of a subset, by exact name (SUBSETS); see splits_of and the module docstring."""
    if subset not in SUBSETS:
        raise DataError(f"unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    if subset == "trainaug":
        listing = splits_dir / TRAINAUG_LIST
        if not listing.is_file():
            raise DataError(f"no {listing}: run `python download_data.py --sbd` to build SBD's trainaug split")
        return read_ids(listing)
    return splits_of(splits_dir, val_fraction).ids(subset)


def fingerprint(ids: list[str]) -> str:
    """A short hash of a subset's ids, order-free: what config.json records of each split."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode("utf-8"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Tree:
    """A data tree in place: VOC layout, its class table and how its lists split."""

    root: Path
    classes: ClassTable
    kind: str = "voc"  # "voc" (VOC 2012 or the synthetic stand-in) or "cvat" (an export with labelmap.txt)
    val_fraction: float = DEFAULT_VAL_FRACTION

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES_DIR

    @property
    def splits_dir(self) -> Path:
        return self.root / SPLITS_DIR

    def masks_dir(self, subset: str) -> Path:
        """SegmentationClassAug for trainaug (SBD's masks and VOC's), SegmentationClass otherwise."""
        return self.root / (AUG_MASKS_DIR if subset == "trainaug" else MASKS_DIR)

    def ids(self, subset: str) -> list[str]:
        return subset_ids(self.splits_dir, subset, self.val_fraction)

    @functools.cached_property
    def _images(self) -> dict[str, Path]:
        """{id: image path} for every image file (VOC's are .jpg; a CVAT export keeps its originals)."""
        found: dict[str, Path] = {}
        try:
            with os.scandir(self.images_dir) as entries:
                for entry in entries:
                    stem, suffix = os.path.splitext(entry.name)
                    if suffix.lower() in IMAGE_SUFFIXES and (stem not in found or suffix == ".jpg"):
                        found[stem] = Path(entry.path)
        except OSError as err:
            raise DataError(f"cannot list {self.images_dir}: {err.strerror or err}") from None
        return found

    def _image_path(self, image_id: str) -> Path:
        """The image of an id: found in the images folder by stem, or for an id in a subfolder
        (CVAT keeps `cam1/frame_004` for a task's subfolders) by trying each suffix there; where
        it should be (.jpg) if there is none."""
        if image_id in self._images:
            return self._images[image_id]
        if "/" in image_id:
            for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
                candidate = self.images_dir / f"{image_id}{suffix}"
                if candidate.is_file():
                    return candidate
        return self.images_dir / f"{image_id}.jpg"

    def pairs(self, subset: str) -> list[tuple[str, str]]:
        """(image path, mask path) of every id of `subset`, as strings; missing files are listed
        as where they should be (check_complete reports them)."""
        masks = self.masks_dir(subset)
        return [(str(self._image_path(i)), str(masks / f"{i}.png")) for i in self.ids(subset)]

    def splits(self) -> Splits:
        """Every subset's ids and the list each came from."""
        return splits_of(self.splits_dir, self.val_fraction)

    def split_record(self, train_split: str = "train") -> dict:
        """{subset: {"from": list, "count": n, "sha256": fingerprint}} of the training split, val
        and test, for config.json: evaluate and export check that the data still gives them."""
        splits = self.splits()
        record = {}
        for subset in (train_split, "val", "test"):
            ids = self.ids(subset) if subset == "trainaug" else splits.ids(subset)
            origin = TRAINAUG_LIST if subset == "trainaug" else splits.origin[subset]
            record[subset] = {"from": origin, "count": len(ids), "sha256": fingerprint(ids)}
        return record

    def check_split(self, recorded: dict | None, subset: str) -> list[str]:
        """The ids of `subset`, after checking they are the ones a run recorded (split_record).

        A DataError when the list changed since training: a grown list reshuffles the held-out
        halves, and the test split could then hold images the model trained on or was selected
        on. A run without a record (older versions) is not checked.
        """
        ids = self.ids(subset)
        for part in ("val", "test") if subset == "full-val" else (subset,):
            if recorded and part in recorded:
                self._check_same(recorded[part], part)
        return ids

    def _check_same(self, then: dict, subset: str) -> None:
        ids = self.ids(subset)
        if fingerprint(ids) != then["sha256"]:
            raise DataError(f"the {subset} split of {self.root} is not the one this run used: {len(ids)} ids now, "
                            f"{then['count']} when it trained (from {then['from']}). Its split lists changed since, "
                            f"so the images scored now could include ones the model trained on. Restore the lists "
                            f"the run used (or point --data-dir at that copy of the data), or train a new run")

    def check_complete(self, subsets=("train", "full-val")) -> dict[str, int]:
        """Every id of `subsets` has its image and mask; returns {subset: number of ids}.

        A tree is complete when its lists are, whatever else its folders hold (test images,
        SegmentationClassAug): counting files would call those trees broken.
        """
        counts, missing = {}, []
        for subset in subsets:
            pairs = self.pairs(subset)
            counts[subset] = len(pairs)
            missing += [p for pair in pairs for p in pair if not os.path.isfile(p)]
        if missing:
            missing = list(dict.fromkeys(missing))
            shown = "\n  ".join(missing[:5])
            raise DataError(f"the data tree {self.root} is incomplete: {len(missing)} file(s) its split lists "
                            f"name are missing, first:\n  {shown}\nrestore them (nothing was downloaded or "
                            f"changed), or point --data-dir at a complete tree")
        return counts

    def describe(self) -> dict:
        """What config.json records about the data a run saw."""
        return {"data_root": str(self.root.resolve()), "data_kind": self.kind, "val_fraction": self.val_fraction,
                "classes": self.classes.to_json()}


def is_tree(folder: Path) -> bool:
    """Whether `folder` has the VOC layout's three folders."""
    return all((folder / sub).is_dir() for sub in (IMAGES_DIR, MASKS_DIR, SPLITS_DIR))


def find_tree(data_dir: str | Path) -> Path | None:
    """The first of VOC_LAYOUTS under `data_dir` that is a tree, or None."""
    data_dir = Path(data_dir).expanduser()
    return next((data_dir / layout for layout in VOC_LAYOUTS if is_tree(data_dir / layout)), None)


def resolve_tree(data_dir: str | Path, labelmap: str | Path | None = None,
                 val_fraction: float = DEFAULT_VAL_FRACTION) -> Tree:
    """The data tree at or under `data_dir`, with its class table.

    Classes: `labelmap` if given, else the tree's own labelmap.txt (a CVAT export), else VOC's.
    Raises DataError naming every place it looked.
    """
    data_dir = Path(data_dir).expanduser()
    root = find_tree(data_dir)
    if root is None:
        looked = ", ".join(str(data_dir / layout) for layout in VOC_LAYOUTS)
        raise DataError(f"no VOC 2012 tree or CVAT export under {data_dir}: looked for {IMAGES_DIR}/, {MASKS_DIR}/ "
                        f"and {SPLITS_DIR}/ in {looked}. Download VOC with `python download_data.py --data-dir "
                        f"{data_dir}`, or point --data-dir at your data")
    own = root / LABELMAP
    if labelmap is not None:
        classes = ClassTable.from_labelmap(labelmap)
    elif own.is_file():
        classes = ClassTable.from_labelmap(own)
    else:
        classes = ClassTable.voc()
    return Tree(root, classes, "cvat" if own.is_file() else "voc", val_fraction)


def tree_from_config(config: dict, data_dir: str | Path | None = None) -> Tree:
    """The data tree a run recorded in its config.json (data_root, classes, val_fraction), or
    the tree now at `data_dir` (if the data moved) read with the run's classes."""
    if "classes" not in config or "data_root" not in config:
        raise DataError("this run's config.json does not record its data tree and classes (a run from an older "
                        "version of the kit); train it again")
    classes = ClassTable.from_json(config["classes"])
    val_fraction = config.get("val_fraction", DEFAULT_VAL_FRACTION)
    if data_dir:
        tree = resolve_tree(data_dir, val_fraction=val_fraction)
        return Tree(tree.root, classes, tree.kind, val_fraction)
    root = Path(config["data_root"])
    if not is_tree(root):
        raise DataError(f"the run's data tree {root} is gone (no {IMAGES_DIR}/, {MASKS_DIR}/, {SPLITS_DIR}/ there); "
                        f"pass --data-dir where the data is now")
    return Tree(root, classes, config.get("data_kind", "voc"), val_fraction)


def classes_from_json_file(path: str | Path) -> ClassTable:
    """A ClassTable saved as JSON (ClassTable.to_json), e.g. an export's classes.json."""
    return ClassTable.from_json(json.loads(Path(path).read_text()))
