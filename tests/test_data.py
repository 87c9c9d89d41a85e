"""kit/data.py: VOC trees in every layout, CVAT label maps, masks decoded by colour, exact split names."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from kit import data
import pipeline
from kit import voc
from kit.data import ClassTable, DataError

VOC = ClassTable.voc()


def _tree(root, ids_train=("a", "b", "c"), ids_val=("d", "e", "f", "g"), size=(20, 16)):
    """A small VOC-layout tree: images, VOC-palette masks with every id's index on a stripe."""
    for sub in (data.IMAGES_DIR, data.MASKS_DIR, data.SPLITS_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, image_id in enumerate((*ids_train, *ids_val)):
        Image.new("RGB", size, (10 * k, 0, 0)).save(root / data.IMAGES_DIR / f"{image_id}.jpg")
        mask = np.zeros(size[::-1], np.uint8)
        mask[:, : k + 1] = k % voc.NUM_CLASSES
        mask[0] = voc.IGNORE_LABEL
        VOC.save_mask(mask, root / data.MASKS_DIR / f"{image_id}.png")
    (root / data.SPLITS_DIR / "train.txt").write_text("".join(f"{i}\n" for i in ids_train))
    (root / data.SPLITS_DIR / "val.txt").write_text("".join(f"{i}\n" for i in ids_val))
    return root


@pytest.mark.parametrize("layout", [str(p) for p in data.VOC_LAYOUTS])
def test_a_voc_tree_is_found_in_every_layout(tmp_path, layout):
    root = _tree(tmp_path / "data" / layout)
    tree = data.resolve_tree(tmp_path / "data")
    assert tree.root.resolve() == root.resolve() and tree.kind == "voc" and tree.classes == VOC
    assert tree.check_complete() == {"train": 3, "full-val": 4}


def test_extra_files_do_not_make_a_tree_incomplete(tmp_path):
    root = _tree(tmp_path / "VOC2012")
    Image.new("RGB", (5, 5)).save(root / data.IMAGES_DIR / "test_only.jpg")
    (root / data.AUG_MASKS_DIR).mkdir()
    assert data.resolve_tree(tmp_path).check_complete() == {"train": 3, "full-val": 4}


def test_an_incomplete_tree_names_the_first_missing_files_and_how_many(tmp_path):
    root = _tree(tmp_path / "VOC2012")
    (root / data.MASKS_DIR / "b.png").unlink()
    (root / data.IMAGES_DIR / "e.jpg").unlink()
    with pytest.raises(DataError, match=r"(?s)2 file\(s\).*b\.png") as info:
        data.resolve_tree(tmp_path).check_complete()
    assert "e.jpg" in str(info.value)


def test_no_tree_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="VOCdevkit/VOC2012") as info:
        data.resolve_tree(tmp_path)
    assert "download_data.py" in str(info.value)


def test_split_names_are_exact_and_halves_are_disjoint(tmp_path):
    tree = data.resolve_tree(_tree(tmp_path / "VOC2012"))
    val, test = tree.ids("val"), tree.ids("test")
    assert sorted(val + test) == sorted(tree.ids("full-val")) == ["d", "e", "f", "g"]
    assert not set(val) & set(test) and len(val) == 2
    assert tree.ids("val") == val  # the same on every call
    for wrong in ("trainval", "validation", "test_set", "Train"):
        with pytest.raises(DataError, match=wrong):
            tree.ids(wrong)


def test_duplicate_ids_in_the_validation_list_land_in_one_half(tmp_path):
    root = _tree(tmp_path / "VOC2012")
    (root / data.SPLITS_DIR / "val.txt").write_text("d\ne\nd\nf\ng\ne\n")
    tree = data.resolve_tree(root)
    assert not set(tree.ids("val")) & set(tree.ids("test"))
    assert sorted(tree.ids("val") + tree.ids("test")) == ["d", "e", "f", "g"]


def test_one_list_is_split_by_val_fraction_with_a_fixed_seed(tmp_path):
    root = _tree(tmp_path / "VOC2012", ids_train=tuple("abcdefghij"), ids_val=())
    (root / data.SPLITS_DIR / "train.txt").rename(root / data.SPLITS_DIR / "default.txt")
    (root / data.SPLITS_DIR / "val.txt").unlink()
    tree = data.resolve_tree(root, val_fraction=0.3)
    train, held_out = tree.ids("train"), tree.ids("full-val")
    assert len(held_out) == 3 and sorted(train + held_out) == list("abcdefghij")
    assert data.resolve_tree(root, val_fraction=0.3).ids("train") == train
    assert data.resolve_tree(root, val_fraction=0.5).ids("full-val") != held_out


from conftest import CVAT_LABELMAP as LABELMAP  # noqa: E402


def test_cvat_labelmap_declares_classes_and_ignore_colours(tmp_path):
    path = tmp_path / "labelmap.txt"
    path.write_text(LABELMAP)
    table = ClassTable.from_labelmap(path)
    assert table.names == ("background", "road", "obstacle", "person")
    assert table.colours[1] == (128, 64, 128) and table.ignore_colours == ((255, 255, 255),)
    assert ClassTable.from_json(table.to_json()) == table


@pytest.mark.parametrize("text,message", [("road:1,2::\n", "expected 'name:r,g,b::'"),
                                          ("a:1,2,3::\nb:1,2,3::\n", "share the colour"),
                                          ("a:1,2,3::\na:4,5,6::\n", "twice"),
                                          ("# only a header\n", "no classes"),
                                          ("a:1,2,300::\n", "0..255")])
def test_bad_labelmaps_are_errors_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "labelmap.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        ClassTable.from_labelmap(path)


def _index_mask(rng, h=13, w=17, classes=voc.NUM_CLASSES):
    mask = rng.integers(0, classes, (h, w)).astype(np.uint8)
    mask[0, :5] = voc.IGNORE_LABEL
    return mask


def test_voc_masks_decode_to_their_indices(tmp_path):
    mask = _index_mask(np.random.default_rng(0))
    VOC.save_mask(mask, tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(VOC.decode(im), mask)


def test_a_mask_re_saved_with_its_palette_in_another_order_decodes_the_same(tmp_path):
    mask = _index_mask(np.random.default_rng(1))
    # An editor's re-save: the same colours at other palette indices, the pixels re-indexed.
    order = np.random.default_rng(2).permutation(256)  # new index k holds old colour order[k]
    new_index_of = np.argsort(order)
    image = Image.fromarray(new_index_of[mask].astype(np.uint8))
    image.putpalette(voc.PALETTE[order].reshape(-1).tolist())
    image.save(tmp_path / "re.png")
    with Image.open(tmp_path / "re.png") as im:
        assert not np.array_equal(np.asarray(im), mask)  # the indices changed...
        np.testing.assert_array_equal(VOC.decode(im), mask)  # ...the classes did not


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_rgb_masks_decode_by_colour(tmp_path, mode):
    mask = _index_mask(np.random.default_rng(3))
    rgb = Image.fromarray(voc.PALETTE[mask]).convert(mode)
    rgb.save(tmp_path / "rgb.png")
    with Image.open(tmp_path / "rgb.png") as im:
        assert im.mode == mode
        np.testing.assert_array_equal(VOC.decode(im), mask)


def test_grayscale_masks_hold_indices(tmp_path):
    mask = _index_mask(np.random.default_rng(4))
    Image.fromarray(mask, "L").save(tmp_path / "l.png")
    with Image.open(tmp_path / "l.png") as im:
        np.testing.assert_array_equal(VOC.decode(im), mask)
    Image.fromarray(np.full((3, 3), 40, np.uint8), "L").save(tmp_path / "bad.png")
    with Image.open(tmp_path / "bad.png") as im, pytest.raises(DataError, match=r"bad\.png.*\[40\].*9 pixels"):
        VOC.decode(im, tmp_path / "bad.png")


def test_a_colour_in_no_class_names_the_file_the_colour_and_the_pixels(tmp_path):
    rgb = voc.PALETTE[np.zeros((4, 6), np.uint8)].copy()
    rgb[1, 1:4] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with Image.open(tmp_path / "odd.png") as im, pytest.raises(DataError, match=r"odd\.png.*\(1, 2, 3\) on 3 pixels"):
        VOC.decode(im, tmp_path / "odd.png")
    VOC.save_mask(np.full((2, 2), 50, np.uint8), tmp_path / "p50.png")  # index 50: a palette colour, no class
    with Image.open(tmp_path / "p50.png") as im, pytest.raises(DataError, match=r"p50\.png.*on 4 pixels"):
        VOC.decode(im, tmp_path / "p50.png")


def test_a_cvat_export_is_a_tree_with_its_own_classes(tmp_path, cvat_export):
    masks = cvat_export(tmp_path / "export", seed=5)
    tree = data.resolve_tree(tmp_path / "export")
    assert tree.kind == "cvat" and tree.classes.names == ("background", "road", "obstacle", "person")
    pairs = tree.pairs("train") + tree.pairs("full-val")
    assert len(pairs) == 6 and all(img.endswith(".png") for img, _ in pairs)
    for image_path, mask_path in pairs:
        _, mask = pipeline.load_example(image_path, mask_path, tree.classes)
        np.testing.assert_array_equal(mask, masks[os.path.basename(mask_path)[:-4]])


def test_labelmap_flag_declares_the_classes_of_a_voc_style_tree(tmp_path, cvat_export):
    cvat_export(tmp_path / "export", seed=6)
    shutil.move(tmp_path / "export" / data.LABELMAP, tmp_path / "classes.txt")
    assert data.resolve_tree(tmp_path / "export").classes == VOC
    tree = data.resolve_tree(tmp_path / "export", labelmap=tmp_path / "classes.txt")
    assert tree.classes.num_classes == 4


def test_the_chapter_api_returns_class_indices_for_rgb_and_repaletted_masks(tmp_path):
    rng = np.random.default_rng(7)
    root = _tree(tmp_path / "VOC2012", ids_train=("p", "q"), ids_val=("r", "s"))
    expected = {}
    for k, image_id in enumerate(("p", "q")):
        mask = _index_mask(rng, 16, 20)
        expected[image_id] = mask
        path = root / data.MASKS_DIR / f"{image_id}.png"
        if k == 0:
            Image.fromarray(voc.PALETTE[mask]).save(path)  # RGB
        else:
            order = rng.permutation(256)
            image = Image.fromarray(np.argsort(order)[mask].astype(np.uint8))
            image.putpalette(voc.PALETTE[order].reshape(-1).tolist())
            image.save(path)
    pairs = pipeline.get_subset_filenames(root / data.IMAGES_DIR, root / data.MASKS_DIR, root / data.SPLITS_DIR, "train")
    ds = pipeline.get_subset_tf_dataset(pairs, 1, 1, input_size=None)
    for (_, mask), image_id in zip(ds, ("p", "q")):
        np.testing.assert_array_equal(mask.numpy()[0], expected[image_id])


def test_check_files_lists_every_bad_file(tmp_path):
    root = _tree(tmp_path / "VOC2012")
    (root / data.IMAGES_DIR / "a.jpg").write_bytes(b"not a jpeg")
    VOC.save_mask(np.full((16, 20), 77, np.uint8), root / data.MASKS_DIR / "d.png")
    tree = data.resolve_tree(root)
    with pytest.raises(DataError, match=r"2 of the 7 files") as info:
        pipeline.check_files(tree.pairs("train") + tree.pairs("full-val"), VOC, progress=False)
    assert "a.jpg" in str(info.value) and "d.png" in str(info.value)
