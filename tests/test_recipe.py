"""The recipe behind the published numbers: schedules, weight decay, scale jitter, aux head,
losses that never go silent, batch 1, output stride 8, TTA and sliding windows."""
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kit import config
from kit import data
import losses
import metrics
import model as deeplab
import pipeline
from kit import inference
import train
from kit import training
from kit.voc import IGNORE_LABEL, NUM_CLASSES, PALETTE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("kind", ["poly", "cosine", "constant"])
def test_schedules_follow_their_formula_at_every_step(kind):
    base, total, warmup, power = 0.02, 50, 5, 0.9
    schedule = training.WarmupDecay(base, total, kind, power, warmup)
    for step in range(0, total + 5):
        if step < warmup:
            want = base * (step + 1) / warmup
        else:
            t = min((step - warmup) / (total - warmup), 1.0)
            want = {"poly": base * (1 - t) ** power, "cosine": base * 0.5 * (1 + math.cos(math.pi * t)),
                    "constant": base}[kind]
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-9), step
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(restored(17)) == pytest.approx(float(schedule(17)))


def _tiny_model():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = deeplab.FusedBatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_reaches_kernels_only(name):
    m = _tiny_model()
    optimizer = training.make_optimizer(name, 0.5, momentum=0.0, weight_decay=0.1)
    before = {v.path: v.numpy().copy() for v in m.trainable_variables}
    optimizer.apply([tf.zeros_like(v) for v in m.trainable_variables], m.trainable_variables)  # no loss gradient
    for v in m.trainable_variables:
        if v.name.endswith("kernel"):
            # sgd: w - lr * wd * w; adam: L2 gradient wd * w through Adam (a step of ~lr); adamw: w (1 - lr wd)
            assert not np.allclose(v.numpy(), before[v.path]), v.path
            if name in ("sgd", "adamw"):
                np.testing.assert_allclose(v.numpy(), before[v.path] * (1 - 0.5 * 0.1), rtol=1e-5)
        else:
            np.testing.assert_array_equal(v.numpy(), before[v.path], err_msg=v.path)  # gamma, beta, biases
    assert {v.name for v in m.trainable_variables} >= {"kernel", "bias", "gamma", "beta"}
    config_ = keras.optimizers.serialize(optimizer)
    assert keras.optimizers.deserialize(config_).decay == 0.1


@pytest.mark.parametrize("name,stock", [("sgd", lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
                                        ("adam", lambda: keras.optimizers.Adam(0.05))])
def test_fused_updates_match_keras_optimizers(name, stock, monkeypatch):
    """Our SGD and Adam update through TensorFlow's fused kernels and land where Keras's own
    optimizers do, over several traced steps (bias corrections and momentum included)."""
    fused_ops = []
    for op in ("ResourceApplyKerasMomentum", "ResourceApplyAdam"):
        original = getattr(tf.raw_ops, op)
        monkeypatch.setattr(tf.raw_ops, op, lambda *a, _op=op, _f=original, **k: fused_ops.append(_op) or _f(*a, **k))
    rng = np.random.default_rng(0)

    def plain_model():  # no batch norm: the conv bias before one gets float-noise gradients,
        inputs = keras.Input((6, 6, 3))  # which Adam's normalisation blows up to +-lr either way
        x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))

    models = [plain_model(), plain_model()]
    models[1].set_weights(models[0].get_weights())
    optimizers = [training.make_optimizer(name, 0.05, momentum=0.9), stock()]
    x = tf.constant(rng.normal(size=(2, 6, 6, 3)).astype("float32"))
    for model, optimizer in zip(models, optimizers):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True) ** 2)
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        for _ in range(4):
            step()
    assert fused_ops, "no fused update kernel ran"
    for ours, theirs in zip(models[0].trainable_variables, models[1].trainable_variables):
        # Steps are ~0.05; float rounding of the bias corrections differs by ~1e-6.
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5, err_msg=ours.path)


def test_scale_jitter_keeps_image_and_mask_aligned_and_pads_the_mask_with_ignore(tmp_path):
    root = tmp_path / "VOC2012"
    for sub in (data.IMAGES_DIR, data.MASKS_DIR, data.SPLITS_DIR):
        (root / sub).mkdir(parents=True)
    classes = [1, 5, 9, 13]
    from PIL import Image

    for k in range(4):
        mask = np.asarray(classes, np.uint8)[np.arange(60) * 4 // 60][None, :].repeat(40 + 4 * k, 0)
        Image.fromarray(PALETTE[mask]).save(root / data.IMAGES_DIR / f"i{k}.jpg", quality=100)
        data.ClassTable.voc().save_mask(mask, root / data.MASKS_DIR / f"i{k}.png")
    (root / data.SPLITS_DIR / "train.txt").write_text("i0\ni1\ni2\ni3\n")
    (root / data.SPLITS_DIR / "val.txt").write_text("i0\ni1\n")
    tree = data.resolve_tree(root)
    # Scale 0.5-1.0 of a 48 px shorter side: every example is smaller than the 64 px crop.
    ds = pipeline.tree_dataset(tree, "train", batch_size=4, epochs=3, input_size=(64, 64),
                               resize_to_before_crop=(48, 48), augmentation=True, color_jitter=False,
                               seed=3, scale_range=(0.5, 1.0))
    padded_seen = 0
    for images, masks in ds:
        images, masks = images.numpy(), masks.numpy()
        pad = masks == IGNORE_LABEL
        padded_seen += pad.sum()
        np.testing.assert_allclose(images[pad], np.broadcast_to(pipeline.MEAN_RGB, images[pad].shape), atol=1.5)
        inside = ~pad
        colours = PALETTE[np.array(classes)].astype(float)
        decoded = np.array(classes)[((images[inside][:, None, :] - colours) ** 2).sum(-1).argmin(-1)]
        assert (decoded == masks[inside]).mean() > 0.93  # only bilinear edges disagree
        assert set(np.unique(masks)) <= set(classes) | {IGNORE_LABEL}
    assert padded_seen > 0


@pytest.mark.parametrize("loss_name", sorted(losses.LOSSES))
@pytest.mark.parametrize("mode", losses.CLASS_WEIGHTS)
def test_a_one_class_crop_gives_a_positive_loss_and_a_gradient(loss_name, mode):
    y = np.zeros((2, 8, 8), "int32")  # all background, as after a zoomed-in crop
    y[0, 0, :3] = IGNORE_LABEL
    z = tf.Variable(np.random.default_rng(0).normal(size=(2, 8, 8, 5)).astype("float32"))
    weights = losses.dataset_class_weights([70, 10, 10, 5, 5]) if mode == "dataset" else None
    loss_fn = losses.get_loss(loss_name, 5, mode, weights)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, z)
    grad = tape.gradient(loss, z).numpy()
    assert float(loss) > 0 and np.abs(grad).sum() > 0
    np.testing.assert_array_equal(grad[0, 0, :3], 0.0)  # ignored pixels still get none


def test_class_weight_modes_follow_their_definitions():
    y = np.array([[[0, 0, 0, 1]], [[2, 2, 2, 2]]], "int32")  # image 1: 3 x c0 + c1; image 2: only c2
    image = np.asarray(losses.pixel_weights(y, "image", num_classes=3))
    np.testing.assert_allclose(image, [[[0.25, 0.25, 0.25, 0.75]], [[1, 1, 1, 1]]])
    batch = np.asarray(losses.pixel_weights(y, "batch", num_classes=3))  # counts 3, 1, 4 of 8
    np.testing.assert_allclose(batch, [[[5 / 8] * 3 + [7 / 8]], [[4 / 8] * 4]])
    dataset = np.asarray(losses.pixel_weights(y, "dataset", [0.1, 0.5, 0.9], num_classes=3))
    np.testing.assert_allclose(dataset, [[[0.1, 0.1, 0.1, 0.5]], [[0.9] * 4]])
    np.testing.assert_allclose(np.asarray(losses.pixel_weights(y, "none", num_classes=3)), np.ones((2, 1, 4)))
    ignored = np.array([[[0, 255, 0, 1]]], "int32")  # the void pixel weighs 0 and is not counted
    np.testing.assert_allclose(np.asarray(losses.pixel_weights(ignored, "image", num_classes=3)),
                               [[[1 / 3, 0, 1 / 3, 2 / 3]]])
    assert losses.dataset_class_weights([3, 1, 0]) == [0.25, 0.75, 1.0]
    assert losses.dataset_class_weights([5, 0, 0]) == [1.0, 1.0, 1.0]


def test_training_at_batch_1_stays_finite():
    m = deeplab.build_deeplabv3((64, 64, 3), 5, backbone_weights=None, backbone="mobilenetv2", aspp_filters=8)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.get_loss("ce_dice", 5))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 5, (3, 64, 64)).astype("int32")
    history = m.fit(x, y, batch_size=1, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(np.isfinite(w).all() for w in m.get_weights())  # moving variances included
    assert np.isfinite(np.asarray(m(x[:1], training=False))).all()


def test_freeze_bn_keeps_every_batch_norm_fixed():
    m = deeplab.build_deeplabv3((64, 64, 3), 5, backbone_weights=None, backbone="mobilenetv2", aspp_filters=8)
    norms = [layer for layer in deeplab._all_layers(m) if isinstance(layer, keras.layers.BatchNormalization)]
    assert training.freeze_batch_norm(m) == len(norms) > 40  # the backbone's and ASPP's
    before = [layer.get_weights() for layer in norms]
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses.get_loss("ce", 5))
    rng = np.random.default_rng(2)
    m.fit(rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32"), rng.integers(0, 5, (2, 64, 64)), verbose=0)
    for layer, weights in zip(norms, before):
        for got, want in zip(layer.get_weights(), weights):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)


def test_the_declared_choices_are_the_ones_the_code_implements():
    # kit/config.py declares choices without importing TensorFlow; the implementations must match.
    assert set(config.TRAIN["loss"].choices) == set(losses.LOSSES)
    assert set(config.TRAIN["backbone"].choices) == set(deeplab.BACKBONES)
    for schedule in config.TRAIN["schedule"].choices:
        training.learning_rate(schedule, 0.01, total_steps=10)
    for name in config.TRAIN["optimizer"].choices:
        training.make_optimizer(name, 0.01)


def test_presets_resolve_with_explicit_flags_winning():
    chapter = train.resolve_config(train.parse_args([]))
    assert (chapter["optimizer"], chapter["schedule"], chapter["lr"], chapter["input_size"]) == ("adam", "plateau",
                                                                                              1e-4, 384)
    paper = train.resolve_config(train.parse_args(["--recipe", "deeplabv3"]))
    assert (paper["optimizer"], paper["momentum"], paper["weight_decay"], paper["schedule"], paper["poly_power"],
            paper["scale_range"], paper["input_size"], paper["iterations"], paper["train_split"]) == (
        "sgd", 0.9, 1e-4, "poly", 0.9, [0.5, 2.0], 512, 30000, "auto")
    assert paper["lr"] == pytest.approx(0.01) and paper["batch_size"] == 16
    halved = train.resolve_config(train.parse_args(["--recipe", "deeplabv3", "--batch-size", "8"]))
    assert halved["lr"] == pytest.approx(0.005)
    mine = train.resolve_config(train.parse_args(["--recipe", "deeplabv3", "--lr", "0.02", "--schedule", "cosine",
                                                  "--scale-range", "0.75", "1.5", "--aux-loss"]))
    assert (mine["lr"], mine["schedule"], mine["scale_range"], mine["aux_loss"]) == (0.02, "cosine", [0.75, 1.5], 0.4)
    demo = train.resolve_config(train.parse_args(["--demo", "--recipe", "deeplabv3"]))
    assert (demo["input_size"], demo["iterations"], demo["batch_size"], demo["optimizer"]) == (128, 375, 8, "sgd")
    assert demo["lr"] == pytest.approx(0.005)
    with pytest.raises(config.ConfigError, match="warmup"):
        train.resolve_config(train.parse_args(["--warmup-steps", "10"]))
    with pytest.raises(config.ConfigError, match="resnet50"):
        train.resolve_config(train.parse_args(["--demo", "--aux-loss"]))


TINY_RESNET = ["--dataset", "synthetic", "--num-train", "12", "--num-val", "8", "--input-size", "64",
               "--resize-before-crop", "64", "--batch-size", "4", "--backbone", "resnet50", "--backbone-weights",
               "none", "--aspp-filters", "16", "--bn-momentum", "0.9", "--verbose", "0"]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    import download_data

    d = tmp_path_factory.mktemp("data")
    download_data.ensure_synthetic(d, 12, 8, progress=False, min_size=64, max_size=128)
    return d


def test_poly_schedule_resumes_where_it_stopped(synthetic_dir, tmp_path, monkeypatch):
    argv = ["--data-dir", str(synthetic_dir), "--run-dir", str(tmp_path / "run"), *TINY_RESNET, "--backbone",
            "mobilenetv2", "--recipe", "deeplabv3", "--iterations", "6", "--steps-per-epoch", "2", "--scale-range",
            "0.5", "1.5", "--lr", "0.01", "--warmup-steps", "1"]
    real = training.RunState.on_epoch_begin

    def interrupted(self, epoch, logs=None):  # as if killed after epoch 1 was saved
        if epoch == 1:
            raise KeyboardInterrupt
        real(self, epoch, logs)

    monkeypatch.setattr(training.RunState, "on_epoch_begin", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main(train.parse_args(argv))
    monkeypatch.setattr(training.RunState, "on_epoch_begin", real)
    resumed = train.main(train.parse_args(argv))
    assert resumed["initial_epoch"] == 1
    # The rate at each epoch's first step (0, 2, 4) is the schedule's, across the restart.
    schedule = training.WarmupDecay(0.01, 6, "poly", 0.9, 1)
    assert [row["learning_rate"] for row in resumed["history"]] == pytest.approx(
        [float(schedule(step)) for step in (0, 2, 4)])
    last = keras.models.load_model(tmp_path / "run" / "state" / "last.keras")
    assert int(last.optimizer.iterations.numpy()) == 6  # the iteration limit, counted across the restart
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["epochs"], saved["train_split"], saved["optimizer"]) == (3, "train", "sgd")


@pytest.fixture(scope="module")
def aux_run(synthetic_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("aux")
    train.main(train.parse_args(["--data-dir", str(synthetic_dir), "--run-dir", str(run_dir), *TINY_RESNET,
                                 "--aux-loss", "--epochs", "1", "--steps-per-epoch", "2", "--class-weights", "dataset"]))
    return run_dir


def test_the_aux_head_trains_but_stays_out_of_best_keras(aux_run):
    saved = json.loads((aux_run / "config.json").read_text())
    assert saved["aux_loss"] == 0.4 and len(saved["dataset_class_weights"]) == NUM_CLASSES
    best = inference.load_model(aux_run / "best.keras")
    assert not [layer.name for layer in best.layers if layer.name.startswith("aux")]
    assert best.output.shape[-1] == NUM_CLASSES and best.layers[-1].name == "logits"
    last = keras.models.load_model(aux_run / "state" / "last.keras")
    assert last.output.shape[-1] == 2 * NUM_CLASSES and last.get_layer("aux_classifier")
    inner = deeplab.inference_model(last)
    x = np.random.default_rng(3).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(inner(x)), np.asarray(last(x))[..., :NUM_CLASSES], atol=1e-5)


def test_output_stride_8_evaluation_reuses_the_stride_16_weights(aux_run, tmp_path):
    import evaluate

    m16 = inference.load_model(aux_run / "best.keras")
    m8 = deeplab.with_output_stride(m16, 8)
    assert m8.name.endswith("os8") and m8.get_layer("conv4_block2_2_conv").dilation_rate == (2, 2)
    for name in ("conv4_block3_2_conv", "conv5_block1_2_conv", "aspp", "classifier"):
        for got, want in zip(m8.get_layer(name).get_weights(), m16.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(4).uniform(0, 255, (1, 72, 56, 3)).astype("float32")
    assert m8(x).shape == m16(x).shape == (1, 72, 56, NUM_CLASSES)
    report = evaluate.main(evaluate.parse_args(["--run-dir", str(aux_run), "--out-dir", str(tmp_path),
                                                "--output-stride", "8", "--num-figures", "1"]))
    assert (report["output_stride"], report["trained_output_stride"]) == (8, 16)


class _Toy:
    """A model stand-in with position- and colour-dependent logits, so flips and scales change them."""

    input_shape = (None, None, None, 3)

    def __call__(self, x, training=False):
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        col = tf.cast(tf.range(w), tf.float32)[None, None, :, None] / tf.cast(w, tf.float32)
        row = tf.cast(tf.range(h), tf.float32)[None, :, None, None] / tf.cast(h, tf.float32)
        ones = tf.ones_like(x[..., :1])
        return tf.concat([x[..., :1] / 50.0 + 3 * col * ones, x[..., 1:2] / 60.0 + 2 * row * ones, x[..., 2:3] / 40.0], -1)


def test_tta_averages_softmax_probabilities_at_the_original_size():
    toy = _Toy()
    x = np.random.default_rng(5).uniform(0, 255, (1, 20, 30, 3)).astype("float32")
    p = inference.Predictor(toy, flip=True, scales=(1.0, 0.5)).probabilities(x).numpy()

    def soft(v):
        return tf.nn.softmax(toy(tf.constant(v))).numpy()

    small = tf.image.resize(x, (10, 15)).numpy()
    views = [soft(x), soft(x[:, :, ::-1])[:, :, ::-1],
             tf.image.resize(soft(small), (20, 30)).numpy(), tf.image.resize(soft(small[:, :, ::-1])[:, :, ::-1], (20, 30)).numpy()]
    np.testing.assert_allclose(p, np.mean(views, axis=0), atol=1e-5)


def test_sliding_windows_sum_probabilities_over_overlaps():
    toy = _Toy()
    x = np.random.default_rng(6).uniform(0, 255, (1, 70, 95, 3)).astype("float32")
    slid = inference.Predictor(toy, mode="slide", crop_size=32, stride=20).masks(x)[0]
    total = np.zeros((70, 95, 3))
    for r in inference.window_starts(70, 32, 20):
        for c in inference.window_starts(95, 32, 20):
            total[r:r + 32, c:c + 32] += tf.nn.softmax(toy(tf.constant(x[:, r:r + 32, c:c + 32]))).numpy()[0]
    np.testing.assert_array_equal(slid, total.argmax(-1))
    assert inference.window_starts(70, 32, 20) == [0, 20, 38]
    whole = inference.Predictor(toy, mode="auto", max_pixels=10 ** 6)
    np.testing.assert_array_equal(whole.masks(x), np.argmax(whole.probabilities(x), -1))
    assert whole.slid == 0


def test_masks_rank_classes_as_the_probabilities_do():
    """One view at the image's size: the argmax of logits, in the graph; several: of the mean probabilities."""
    toy = _Toy()
    x = np.random.default_rng(7).uniform(0, 255, (2, 24, 36, 3)).astype("float32")
    for options in ({}, {"flip": True}, {"scales": (1.0, 0.5)}):
        predictor = inference.Predictor(toy, **options)
        assert predictor.single_view == (options == {})
        masks = predictor.masks(x)
        assert masks.dtype == np.uint8 and masks.shape == (2, 24, 36)
        np.testing.assert_array_equal(masks, np.argmax(predictor.probabilities(x), -1))
