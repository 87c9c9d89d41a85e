"""Faults found by attacking the data formats from the command line: each test fails without its fix."""
import numpy as np
import pytest
from PIL import Image

from kit import data


def _image(path, size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path)


def _mask(path, size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((size[1], size[0]), np.uint8)
    values[:, size[0] // 2:] = 1
    Image.fromarray(values, mode="L").save(path)


BOM = "\ufeff".encode("utf-8")


def test_a_byte_order_mark_is_not_part_of_the_first_class_name(tmp_path):
    """Notepad saves class_names.txt / classes.txt with a BOM: class 0 must still be "background"
    (navigation's costs go by name), not "\\ufeff_background_"."""
    labelme = tmp_path / "labelme"
    for i in range(4):
        _image(labelme / "JPEGImages" / f"f{i}.jpg")
        _mask(labelme / "SegmentationClass" / f"f{i}.png")
    (labelme / "class_names.txt").write_bytes(BOM + b"_background_\nroad\n")
    assert data.resolve_tree(labelme).classes.names == ("background", "road")

    generic = tmp_path / "generic"
    for i in range(4):
        _image(generic / "images" / f"g{i}.jpg")
        _mask(generic / "masks" / f"g{i}.png")
    (generic / "classes.txt").write_bytes(BOM + b"background\nroad\n")
    assert data.resolve_tree(generic).classes.names == ("background", "road")
    (generic / "classes.txt").unlink()
    (generic / "dataset_meta.json").write_bytes(BOM + b'{"classes": ["floor", "wall"]}')
    assert data.resolve_tree(generic).classes.names == ("floor", "wall")


@pytest.mark.parametrize("layout", ["generic", "generic-split", "camvid", "roboflow", "ade20k"])
def test_two_images_with_one_id_are_refused_not_one_dropped(tmp_path, layout):
    """x.jpg and x.png in one folder are one id: one of them was silently dropped."""
    folder = {"generic": "images", "generic-split": "images/train", "camvid": "train", "roboflow": "train",
              "ade20k": "images/training"}[layout]
    for i in range(4):
        _image(tmp_path / folder / f"x{i}.jpg")
    _image(tmp_path / folder / "x0.png")
    if layout.startswith("generic"):
        (tmp_path / "masks" / ("train" if layout == "generic-split" else "")).mkdir(parents=True)
        (tmp_path / "classes.txt").write_text("background\nroad\n")
    elif layout == "camvid":
        (tmp_path / "trainannot").mkdir()
    elif layout == "roboflow":
        (tmp_path / "train" / "_classes.csv").write_text("Pixel Value, Class\n0, background\n1, road\n")
    else:
        (tmp_path / "annotations" / "training").mkdir(parents=True)
    tree = data.resolve_tree(tmp_path)
    with pytest.raises(data.DataError, match=r"x0.jpg and x0.png have the same name before the suffix"):
        tree.pairs("train")


class _Constant:
    """A stand-in model: (B, H, W, 3) -> (B, H, W, 2) logits that favour class 1."""

    input_shape, output_shape = (None, None, None, 3), (None, None, None, 2)
    traceable = False

    def __call__(self, images, training=False):
        images = np.asarray(images)
        return np.stack([np.zeros(images.shape[:3], np.float32), np.ones(images.shape[:3], np.float32)], axis=-1)


def test_predict_stopped_while_writing_leaves_the_last_runs_files_whole(tmp_path, monkeypatch):
    """A re-run into the same --out, stopped (Ctrl-C, kill) while a mask is being written, left a
    truncated NAME_mask.png where the last run's good one was."""
    import predict
    from kit import onboard

    _image(tmp_path / "in" / "x.jpg", (48, 40))
    classes = data.ClassTable(("background", "road"), ((0, 0, 0), (128, 64, 128)))
    predictor = onboard.Predictor(_Constant())
    out = tmp_path / "out"
    predict.predict_files(predictor, [tmp_path / "in" / "x.jpg"], out, classes)
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(good) == {"x_mask.png", "x_overlay.jpg"}

    real_save = Image.Image.save

    def stopped(self, fp, *args, **kwargs):  # half a file written, then the process is stopped
        real_save(self, fp, *args, **kwargs)
        with open(fp, "r+b") as f:
            f.truncate(20)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_files(predictor, [tmp_path / "in" / "x.jpg"], out, classes)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good


def test_an_upper_case_model_suffix_runs_without_tensorflow(tmp_path):
    from kit import onboard

    model = tmp_path / "MODEL.ONNX"  # as a FAT-formatted SD card may show it
    model.write_bytes(b"not a model")
    assert onboard.runs_without_tensorflow(model)
    with pytest.raises(onboard.ModelFileError, match="cannot be loaded as a model"):
        onboard.load_model(model)  # reaches ONNX Runtime, which names the broken file
