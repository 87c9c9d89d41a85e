"""VOC's constants against the devkit's published values (VOCdevkit's VOClabelcolormap.m)."""
import numpy as np

from kit import voc


def test_class_names_and_palette_follow_the_devkit():
    assert voc.NUM_CLASSES == 21 == len(voc.CLASS_NAMES)
    assert voc.CLASS_NAMES[0] == "background" and voc.CLASS_NAMES[15] == "person"
    assert voc.CLASS_NAMES[-1] == "tvmonitor"
    assert voc.IGNORE_LABEL == 255
    assert voc.PALETTE.shape == (256, 3) and voc.PALETTE.dtype == np.uint8
    # Values printed by the devkit's colormap for a few indices, void (255) included.
    devkit = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 7: (128, 128, 128),
              8: (64, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    for index, colour in devkit.items():
        assert tuple(voc.PALETTE[index]) == colour, index
    assert len({tuple(c) for c in voc.PALETTE}) == 256
