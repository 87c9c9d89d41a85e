"""model.py: shapes, atrous rates, weight transfer, saving, fused batch norm, dilated-conv kernels."""
import numpy as np
import pytest
import tensorflow as tf
import keras

import model as deeplab
from kit import kernels
from kit.voc import NUM_CLASSES


@pytest.fixture(scope="module")
def models():
    """One any-size model per output stride, built once for the module (no pretrained weights)."""
    return {os_: deeplab.build_deeplabv3((None, None, 3), backbone_weights=None, output_stride=os_)
            for os_ in (16, 8)}


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("size", [64, 96])
def test_logits_at_input_resolution(models, output_stride, size):
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    y = models[output_stride](x, training=False)
    assert tuple(y.shape) == (2, size, size, NUM_CLASSES)
    assert y.dtype == "float32"


def test_fixed_size_build_and_non_square_input(models):
    m = deeplab.build_deeplabv3((64, 96, 3), backbone_weights=None)
    assert tuple(m.output.shape) == (None, 64, 96, NUM_CLASSES)
    assert tuple(models[16](np.zeros((1, 72, 104, 3), "float32")).shape) == (1, 72, 104, NUM_CLASSES)


def _rates(m, stage, blocks):
    return [m.get_layer(f"{stage}_block{b}_2_conv").dilation_rate for b in range(1, blocks + 1)]


def test_atrous_rates_for_output_stride_16_and_8(models):
    m16, m8 = models[16], models[8]
    assert _rates(m16, "conv5", 3) == [(2, 2)] * 3
    assert _rates(m16, "conv4", 6) == [(1, 1)] * 6
    assert [b[0].dilation_rate for b in m16.get_layer("aspp").branches[1:]] == [(6, 6), (12, 12), (18, 18)]
    assert _rates(m8, "conv4", 6) == [(2, 2)] * 6
    assert _rates(m8, "conv5", 3) == [(4, 4)] * 3
    assert [b[0].dilation_rate for b in m8.get_layer("aspp").branches[1:]] == [(12, 12), (24, 24), (36, 36)]
    # No stage downsamples after the cut: features stay at H/16 (or H/8).
    for m, os_ in ((m16, 16), (m8, 8)):
        feats = keras.Model(m.input, m.get_layer("conv5_block3_out").output)(np.zeros((1, 64, 64, 3), "float32"))
        assert tuple(feats.shape) == (1, 64 // os_, 64 // os_, 2048)


def test_multi_grid_multiplies_conv5_rates():
    m = deeplab.build_deeplabv3((64, 64, 3), backbone_weights=None, multi_grid=(1, 2, 4))
    assert _rates(m, "conv5", 3) == [(2, 2), (4, 4), (8, 8)]


def test_shortcuts_take_the_previous_blocks_relu_output(models):
    m = models[16]
    add = m.get_layer("conv5_block2_add")
    sources = {t._keras_history.operation.name for t in add.input}
    assert "conv5_block1_out" in sources  # the ReLU'd output, not conv5_block1_add
    proj = m.get_layer("conv5_block1_0_conv")
    assert proj.input._keras_history.operation.name == "conv4_block6_out"


def test_aspp_pooling_branch_has_its_conv(models):
    aspp = models[16].get_layer("aspp")
    conv, bn, _ = aspp.pool_branch
    assert conv.kernel.shape == (1, 1, 2048, 256) and bn.built


@pytest.mark.parametrize("output_stride", [16, 8])
def test_weights_file_is_carried_into_every_backbone_layer(tmp_path, output_stride):
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    rng = np.random.default_rng(1)
    for layer in source.layers:  # random statistics too, so batch norm moments are checked
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(path)
    m = deeplab.build_deeplabv3((64, 64, 3), backbone_weights=str(path), output_stride=output_stride)
    checked = 0
    for layer in m.layers:
        if layer.name.startswith(("conv1", "conv2", "conv3", "conv4", "conv5")) and layer.weights:
            for got, want in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(got, want, err_msg=layer.name)
            checked += 1
    assert checked == 53 * 2  # every conv (conv1, 48 in blocks, 4 projections) and its batch norm
    rebuilt = "conv5" if output_stride == 16 else "conv4"
    assert m.get_layer(f"{rebuilt}_block2_2_conv").dilation_rate != (1, 1)


def test_missing_weights_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no_such.h5"):
        deeplab.build_deeplabv3((64, 64, 3), backbone_weights="no_such.h5")


def test_imagenet_download_failure_tells_the_user_what_to_do(monkeypatch):
    from keras.src.applications import resnet

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(resnet.file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match="--backbone-weights PATH"):
        deeplab.build_deeplabv3((64, 64, 3), backbone_weights="imagenet")


def test_preprocessing_is_inside_the_model(models):
    layer = models[16].get_layer("imagenet_preprocessing")
    x = np.array([[[[255.0, 128.0, 0.0]]]], "float32")
    np.testing.assert_allclose(np.asarray(layer(x))[0, 0, 0], [0.0 - 103.939, 128.0 - 116.779, 255.0 - 123.68],
                               rtol=1e-6)


def test_keras_file_round_trip_with_safe_mode(models, tmp_path):
    m = models[16]
    path = tmp_path / "m.keras"
    m.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    x = np.random.default_rng(2).uniform(0, 255, (1, 64, 80, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(m(x, training=False)), np.asarray(loaded(x, training=False)))


def _tiny_model(last="resize", policy=None):
    """(B, H, W, 3) -> (B, H, W, 21) logits through a 4x coarser map, in a few layers."""
    images = keras.Input((None, None, 3))
    x = keras.layers.AveragePooling2D(4, name="pool")(images)
    x = keras.layers.Conv2D(NUM_CLASSES, 1, dtype=policy, name="classifier")(x)  # (B, H/4, W/4, 21)
    if last == "resize":
        return keras.Model(images, deeplab.ResizeLike(name="logits", dtype="float32")(x, images))
    if last == "resize_to_other":  # resized to something other than the input image
        return keras.Model(images, deeplab.ResizeLike(name="logits")(x, keras.layers.Identity()(images)))
    return keras.Model(images, keras.layers.UpSampling2D(4, name="up")(x))


def test_coarse_logits_model_is_the_model_without_its_last_upsampling(models, tmp_path):
    """ResizeLike.resize(coarse logits, (H, W)) is the whole model's output, bit for bit, for
    the model built here, the same model reloaded, and a mixed-precision one (float32 out)."""
    path = tmp_path / "m.keras"
    models[16].save(path)
    x = np.random.default_rng(3).uniform(0, 255, (1, 64, 80, 3)).astype("float32")
    for whole in (models[16], keras.models.load_model(path, safe_mode=True), _tiny_model(policy="mixed_bfloat16")):
        coarse = deeplab.coarse_logits_model(whole)
        logits = coarse(x, training=False)
        stride = 16 if whole.name.startswith("deeplab") else 4
        assert tuple(logits.shape) == (1, 64 // stride, 80 // stride, NUM_CLASSES) and logits.dtype == "float32"
        np.testing.assert_array_equal(np.asarray(deeplab.ResizeLike.resize(logits, (64, 80))),
                                      np.asarray(whole(x, training=False)))


def test_models_that_end_otherwise_have_no_coarse_logits_model(models):
    assert deeplab.coarse_logits_model(_tiny_model()) is not None
    assert deeplab.coarse_logits_model(_tiny_model("upsampling")) is None
    assert deeplab.coarse_logits_model(_tiny_model("resize_to_other")) is None
    assert deeplab.coarse_logits_model(deeplab.training_model(models[16])) is None  # logits and aux logits
    assert deeplab.coarse_logits_model(object()) is None


def test_mobilenetv2_backbone_has_the_same_head():
    m = deeplab.build_deeplabv3((96, 96, 3), backbone_weights=None, backbone="mobilenetv2")
    assert tuple(m(np.zeros((1, 96, 96, 3), "float32")).shape) == (1, 96, 96, NUM_CLASSES)
    assert m.count_params() < 8_000_000
    assert m.get_layer("imagenet_preprocessing").mode == "tf"


def test_fused_batch_norm_matches_keras_batch_norm():
    rng = np.random.default_rng(7)
    x = rng.normal(2.0, 3.0, (4, 5, 6, 8)).astype("float32")
    plain, fused = keras.layers.BatchNormalization(momentum=0.9), deeplab.FusedBatchNormalization(momentum=0.9)
    plain.build(x.shape)
    fused.build(x.shape)
    weights = [rng.uniform(0.5, 1.5, (8,)).astype("float32") for _ in range(4)]
    plain.set_weights(weights)
    fused.set_weights(weights)
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5)


def test_fused_batch_norm_over_one_value_per_channel_stays_finite():
    """ASPP's pooled branch at batch 1: a batch of one value per channel (variance 0)."""
    x = np.random.default_rng(8).normal(size=(1, 1, 1, 6)).astype("float32")
    plain, fused = keras.layers.BatchNormalization(momentum=0.5), deeplab.FusedBatchNormalization(momentum=0.5)
    plain.build(x.shape)
    fused.build(x.shape)
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=1e-5)
    assert np.isfinite(fused.moving_variance.numpy()).all()
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-6)


def test_every_batch_norm_is_fused(models):
    norms = [layer for layer in deeplab._all_layers(models[16]) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 53 + 6  # ResNet-50, then ASPP: 4 branches, pooling, projection
    assert all(isinstance(n, deeplab.FusedBatchNormalization) for n in norms)


KERNELS = ["native", "taps", "portable", "keras"]


@pytest.mark.parametrize("sizes", ["static", "unknown"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rate,shape", [(2, (2, 9, 11, 5)), (6, (2, 9, 11, 5)), (6, (1, 4, 5, 3)), (18, (1, 24, 20, 3))])
def test_dilated_conv_matches_keras_conv_with_gradients(monkeypatch, kernel, rate, shape, sizes):
    """Every kernel DilatedConv2D can take gives Keras Conv2D's output and gradients, in a
    traced step as in training, with the map's size known when traced (as in a model built for
    one input size; taps then trains every case here) or not; (6, 4x5) has taps that read
    only padding."""
    if kernel == "native" and not kernels.native_dilated_gradients():
        pytest.skip("no GPU and no oneDNN here: TensorFlow has no native dilated-conv gradient")
    monkeypatch.setenv(kernels.DILATED_CONV_ENV, kernel)
    assert kernels.dilated_conv_kernel() == kernel
    tapped, original = [], kernels.tap_dilated_conv2d
    monkeypatch.setattr(kernels, "tap_dilated_conv2d", lambda *a, **k: tapped.append(1) or original(*a, **k))
    rng = np.random.default_rng(rate)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    plain = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=rate)
    dilated = deeplab.DilatedConv2D(4, 3, padding="same", dilation_rate=rate)
    plain.build(x.shape)
    dilated.build(x.shape)
    dilated.set_weights([rng.normal(size=w.shape).astype("float32") for w in plain.get_weights()])
    plain.set_weights(dilated.get_weights())
    results = []
    for layer in (plain, dilated):
        spec = tf.TensorSpec(shape if sizes == "static" else (None, None, None, shape[-1]))

        @tf.function(input_signature=[spec])
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)  # as in a training step: taps trains, infers natively
                loss = tf.reduce_sum(y * tf.cos(y))
            return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]

        results.append(step(x))
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert bool(tapped) == (kernel == "taps" and sizes == "static")  # every static case is under 0.8 in bounds
    assert deeplab.DilatedConv2D.from_config(dilated.get_config()).get_config() == dilated.get_config()


def test_taps_conv_handles_sizes_unknown_when_traced():
    """tap_dilated_conv2d itself with sizes only known at run time (taps past the edge included)."""
    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype("float32"))
    for shape, rate in (((1, 4, 5, 3), 6), ((2, 9, 11, 3), 2)):
        x = tf.constant(rng.normal(size=shape).astype("float32"))

        @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3))])
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = kernels.tap_dilated_conv2d(x, kernel, (rate, rate), native_input_gradient=False)
                loss = tf.reduce_sum(y ** 2)
            return y, tape.gradient(loss, x)

        with tf.GradientTape() as tape:
            tape.watch(x)
            # tf.nn.convolution: SpaceToBatchND around a plain conv, differentiable everywhere.
            want = tf.nn.convolution(x, kernel, padding="SAME", dilations=rate)
            loss = tf.reduce_sum(want ** 2)
        want_dx = tape.gradient(loss, x)
        y, dx = step(x)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-3)


def test_in_bounds_fraction_of_aspp_and_conv5():
    assert [round(kernels.in_bounds_fraction((24, 24), (3, 3), (r, r)), 3) for r in (2, 6, 12, 18)] == \
        [0.892, 0.694, 0.444, 0.25]
    assert kernels.in_bounds_fraction((None, 24), (3, 3), (6, 6)) is None


def _training_step_outputs(layer, x):
    """[y, dloss/dx, dloss/dkernel, dloss/dbias] of one training call of `layer`, as float32."""
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, training=True), tf.float32)
            loss = tf.reduce_sum(y * tf.cos(y))
        return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]

    return [np.asarray(tf.cast(t, tf.float32)) for t in step(x)]


def test_pointwise_conv_trains_by_matmul_in_bfloat16_with_conv2d_gradients(monkeypatch):
    """A 1x1 conv with enough channels, in a mixed-bfloat16 training step, takes the matmul
    kernel gradient and gives Conv2D's output and gradients (to bfloat16 rounding)."""
    monkeypatch.delenv(kernels.DILATED_CONV_ENV, raising=False)
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the matmul kernel gradient is for CPUs")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 6, 5, 128)).astype("float32"))
    plain = keras.layers.Conv2D(128, 1, dtype="mixed_bfloat16")
    pointwise = deeplab.PointwiseConv2D(128, 1, dtype="mixed_bfloat16")
    for layer in (plain, pointwise):
        layer.build(x.shape)
    plain.set_weights(pointwise.get_weights())
    assert kernels.matmul_gradient_applies(pointwise, True)
    assert not kernels.matmul_gradient_applies(pointwise, False)  # inference is Conv2D's
    used, original = [], kernels.matmul_gradient_conv1x1
    monkeypatch.setattr(kernels, "matmul_gradient_conv1x1", lambda *a: used.append(1) or original(*a))
    results = [_training_step_outputs(layer, x) for layer in (plain, pointwise)]
    assert used, "the bfloat16 training step did not take the matmul kernel gradient"
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05 * np.abs(a).max())


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("cls,kernel,strides", [("BiasConv2D", 3, 1), ("BiasConv2D", 1, 2),
                                                ("PointwiseConv2D", 1, 1), ("DilatedConv2D", 3, 1)])
def test_training_bias_gradient_by_matvec_matches_conv2d(monkeypatch, policy, cls, kernel, strides):
    """Our conv classes, in a training step on a CPU, add the bias through add_bias_matvec and
    give Keras Conv2D's output and gradients (to bfloat16 rounding in mixed precision)."""
    monkeypatch.delenv(kernels.DILATED_CONV_ENV, raising=False)
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the matvec bias gradient is for CPUs")
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 7, 6, 128)).astype("float32"))
    plain = keras.layers.Conv2D(96, kernel, strides=strides, padding="same", dtype=policy)
    ours = getattr(deeplab, cls)(96, kernel, strides=strides, padding="same", dtype=policy)
    for layer in (plain, ours):
        layer.build(x.shape)
    ours.set_weights([w + 0.1 * rng.normal(size=w.shape).astype("float32") for w in plain.get_weights()])
    plain.set_weights(ours.get_weights())  # a non-zero bias, the same in both
    used, original = [], kernels.add_bias_matvec
    monkeypatch.setattr(kernels, "add_bias_matvec", lambda *a: used.append(1) or original(*a))
    results = [_training_step_outputs(layer, x) for layer in (plain, ours)]
    assert used, f"the {cls} training step did not add its bias through add_bias_matvec"
    tol = 1e-4 if policy == "float32" else 0.05
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())
    used.clear()
    ours(x, training=False)
    assert not used  # inference is Conv2D's bias add


def test_unfused_bias_gradient_follows_the_stock_kernel_setting(monkeypatch):
    monkeypatch.setenv(kernels.DILATED_CONV_ENV, "keras")
    assert not kernels.bias_gradient_by_matvec(True)
    monkeypatch.delenv(kernels.DILATED_CONV_ENV)
    assert kernels.bias_gradient_by_matvec(True) == (not tf.config.list_physical_devices("GPU"))
    assert not kernels.bias_gradient_by_matvec(False)


def test_resnet_1x1_convs_are_pointwise_and_a_training_call_reaches_them(monkeypatch):
    monkeypatch.delenv(kernels.DILATED_CONV_ENV, raising=False)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = deeplab.build_deeplabv3((64, 64, 3), backbone_weights=None, aspp_filters=32)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    pointwise = [layer.name for layer in model.layers if isinstance(layer, deeplab.PointwiseConv2D)]
    assert "conv4_block2_1_conv" in pointwise and "conv5_block1_0_conv" in pointwise
    assert "conv1_conv" not in pointwise and "conv3_block1_0_conv" not in pointwise  # 7x7; stride 2
    # The others with a bias (7x7, 3x3, stride 2) take the matvec bias gradient.
    assert all(isinstance(model.get_layer(name), deeplab.BiasConv2D)
               for name in ("conv1_conv", "conv3_block1_0_conv", "conv2_block1_2_conv", "conv5_block1_2_conv"))
    # The re-classed keras.applications layers get `training` in a model's training call.
    seen = []
    original = kernels.matmul_gradient_applies
    monkeypatch.setattr(kernels, "matmul_gradient_applies",
                        lambda layer, training: seen.append((layer.name, training)) or original(layer, training))
    model(np.zeros((2, 64, 64, 3), "float32"), training=True)
    assert ("conv4_block2_1_conv", True) in seen and ("conv5_block1_0_conv", True) in seen
    if not tf.config.list_physical_devices("GPU"):
        assert original(model.get_layer("conv4_block2_1_conv"), True)  # 1024 -> 256 in bfloat16


def test_a_model_with_pointwise_convs_reloads_with_safe_mode(tmp_path):
    model = deeplab.build_deeplabv3((64, 64, 3), backbone_weights=None, aspp_filters=32)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("conv4_block2_1_conv")) is deeplab.PointwiseConv2D
    assert type(loaded.get_layer("conv2_block1_2_conv")) is deeplab.BiasConv2D
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-5)


def test_unknown_dilated_kernel_setting_is_an_error(monkeypatch):
    monkeypatch.setenv(kernels.DILATED_CONV_ENV, "fast")
    with pytest.raises(ValueError, match="fast"):
        kernels.dilated_conv_kernel()


def test_every_dilated_conv_takes_the_native_kernel(models):
    for m in models.values():
        dilated = [layer for layer in deeplab._all_layers(m)
                   if isinstance(layer, keras.layers.Conv2D) and max(layer.dilation_rate) > 1]
        assert dilated and all(type(layer) is deeplab.DilatedConv2D for layer in dilated)
