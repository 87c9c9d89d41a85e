"""Winograd's F(4x4, 3x3) (kit/kernels.py): the same convolution and gradients as TensorFlow's,
taken where it does few enough multiplications, and reached by a model's training step."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import model as deeplab
from kit import kernels


def _direct(x, kernel, rate):
    """TensorFlow's convolution; tf.nn.convolution (SpaceToBatchND around a plain conv) has
    gradients on every CPU, dilated or not."""
    return tf.nn.convolution(x, kernel, padding="SAME", dilations=rate)


def _step(conv, x, kernel, spec):
    """[y, dloss/dx, dloss/dkernel] of `conv` traced with input signature `spec`."""
    @tf.function(input_signature=[spec])
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv(x)
            loss = tf.reduce_sum(y * tf.cos(y))
        return [y, *tape.gradient(loss, [x, kernel])]

    return [np.asarray(t) for t in step(x)]


@pytest.mark.parametrize("shape,rate", [
    ((2, 12, 12, 8), 1),     # whole tiles
    ((1, 13, 7, 3), 1),      # partial tiles along both axes
    ((2, 24, 24, 6), 2),     # conv5's rate on its map size
    ((1, 13, 7, 3), 3),      # sub-grids of unequal sizes
    ((2, 24, 24, 4), 6),     # ASPP's rate 6
    ((1, 5, 5, 2), 7),       # a rate past the map: only the centre tap reads the image
    ((1, 1, 1, 2), 1),       # one pixel
])
def test_winograd_gives_the_direct_convolution_and_its_gradients(shape, rate):
    rng = np.random.default_rng(rate)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    kernel = tf.constant(rng.normal(size=(3, 3, shape[-1], 5)).astype("float32"))
    unknown_batch = tf.TensorSpec((None, *shape[1:]))  # as Keras retraces a last, smaller batch
    got = _step(lambda v: kernels.winograd_conv3x3(v, kernel, (rate, rate)), x, kernel, unknown_batch)
    want = _step(lambda v: _direct(v, kernel, rate), x, kernel, unknown_batch)
    assert got[0].shape == want[0].shape == shape[:3] + (5,)
    for a, b in zip(got, want):
        # F(4x4, 3x3) rounds differently: about 1e-5 of the range in float32 (1e-6 observed
        # on these sizes); a misplaced tile or tap would be off by the range itself.
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * np.abs(b).max())


def test_winograd_refuses_other_kernels_and_unequal_rates():
    x = tf.zeros((1, 8, 8, 2))
    with pytest.raises(ValueError, match="3x3"):
        kernels.winograd_conv3x3(x, tf.zeros((5, 5, 2, 2)))
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        kernels.winograd_conv3x3(x, tf.zeros((3, 3, 2, 2)), (1, 2))


def test_winograd_multiplications_per_output():
    """36 per 4x4 tile against a direct conv's 9 per pixel: 2.25 where tiles fit, more where
    the rate-r sub-grids leave tiles partly empty."""
    assert [kernels.winograd_multiplies((24, 24), (r, r)) for r in (1, 2, 6, 12, 18)] == [2.25, 2.25, 2.25, 9.0, 20.25]
    # (rate 18: 24 pixels padded to 18 sub-grids of 2, 36 pixels per side)
    assert kernels.winograd_multiplies((4, 4), (2, 2)) == 9.0  # conv5 at 64 px: 2x2 sub-grids
    assert kernels.winograd_multiplies((None, 24), (1, 1)) is None


def _conv(filters, rate=1, dtype="float32", kernel_size=3, strides=1):
    return deeplab.DilatedConv2D(filters, kernel_size, strides=strides, padding="same", dilation_rate=rate,
                                 dtype=dtype)


@pytest.fixture
def auto(monkeypatch):
    monkeypatch.delenv(kernels.WINOGRAD_ENV, raising=False)
    monkeypatch.delenv(kernels.DILATED_CONV_ENV, raising=False)
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("auto leaves GPUs their own kernels")
    return monkeypatch


def test_auto_takes_winograd_where_it_does_under_half_the_in_bounds_work(auto):
    conv5 = keras.KerasTensor((4, 24, 24, 512))
    aspp = keras.KerasTensor((4, 24, 24, 2048))
    assert kernels.winograd_applies(_conv(512, 2), conv5, True)   # 2.25 of 8.0 in-bounds multiplies
    assert kernels.winograd_applies(_conv(256, 6), aspp, True)    # 2.25 of 6.25
    assert not kernels.winograd_applies(_conv(256, 12), aspp, True)  # 9 of 4.0: taps do less
    assert not kernels.winograd_applies(_conv(512, 2), conv5, False)  # inference stays native
    assert not kernels.winograd_applies(_conv(64), keras.KerasTensor((4, 96, 96, 64)), True)  # few channels
    assert not kernels.winograd_applies(_conv(512, 2, "mixed_bfloat16"), conv5, True)  # float32 only
    assert not kernels.winograd_applies(_conv(512), keras.KerasTensor((4, None, None, 512)), True)
    assert not kernels.winograd_applies(_conv(512, kernel_size=1), conv5, True)
    assert not kernels.winograd_applies(_conv(512, strides=2), conv5, True)
    assert not kernels.winograd_applies(_conv(512, (1, 2)), conv5, True)  # winograd_conv3x3 takes one rate
    auto.setenv(kernels.DILATED_CONV_ENV, "keras")  # TensorFlow's stock kernels throughout
    assert not kernels.winograd_applies(_conv(512, 2), conv5, True)


def test_the_setting_forces_it_on_or_off(auto):
    small = keras.KerasTensor((4, 96, 96, 64))
    auto.setenv(kernels.WINOGRAD_ENV, "on")
    assert kernels.winograd_applies(_conv(64), small, True)
    assert not kernels.winograd_applies(_conv(64, dtype="mixed_bfloat16"), small, True)  # still float32 only
    assert "on" in kernels.winograd_setting("float32")
    auto.setenv(kernels.WINOGRAD_ENV, "off")
    assert not kernels.winograd_applies(_conv(512, 2), keras.KerasTensor((4, 24, 24, 512)), True)
    assert "off" in kernels.winograd_setting("float32")
    auto.setenv(kernels.WINOGRAD_ENV, "fast")
    with pytest.raises(ValueError, match="DEEPLAB_WINOGRAD='fast'"):
        kernels.winograd_choice()


def test_a_step_compiled_whole_by_xla_keeps_the_direct_conv(auto):
    """train.py --xla: XLA plans the whole step's convs itself, even when Winograd is forced."""
    auto.setenv(kernels.WINOGRAD_ENV, "on")
    layer, seen = _conv(512, 2), []

    @tf.function(jit_compile=True)
    def step(x):
        seen.append(kernels.winograd_applies(layer, x, True))
        return x

    step(tf.zeros((1, 24, 24, 512)))
    assert seen == [False]
    assert kernels.winograd_applies(layer, keras.KerasTensor((1, 24, 24, 512)), True)


def test_forcing_it_without_xla_is_an_error(auto):
    auto.setattr(kernels, "xla_compiles", lambda: False)
    conv5 = keras.KerasTensor((4, 24, 24, 512))
    assert not kernels.winograd_applies(_conv(512, 2), conv5, True)  # auto: the direct conv
    assert "no XLA" in kernels.winograd_setting("float32")
    auto.setenv(kernels.WINOGRAD_ENV, "on")
    with pytest.raises(RuntimeError, match="XLA"):
        kernels.winograd_applies(_conv(512, 2), conv5, True)


def test_a_layer_trains_by_winograd_with_conv2d_outputs_and_gradients(auto):
    """A DilatedConv2D's training step through Winograd (bias by matvec too) against Keras's
    Conv2D; its inference call stays the direct conv."""
    auto.setenv(kernels.WINOGRAD_ENV, "on")
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 10, 9, 6)).astype("float32"))
    plain = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2)
    ours = deeplab.DilatedConv2D(4, 3, padding="same", dilation_rate=2)
    for layer in (plain, ours):
        layer.build(x.shape)
    ours.set_weights([rng.normal(size=w.shape).astype("float32") for w in plain.get_weights()])
    plain.set_weights(ours.get_weights())
    used, original = [], kernels.winograd_conv3x3
    auto.setattr(kernels, "winograd_conv3x3", lambda *a: used.append(1) or original(*a))
    got = _training_outputs(ours, x)
    assert used, "the training step did not take the Winograd kernel"
    for a, b in zip(got, _training_outputs(plain, x)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * np.abs(b).max())
    used.clear()
    ours(x, training=False)
    assert not used


def _training_outputs(layer, x):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.cos(y))
        return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]

    return [np.asarray(t) for t in step(x)]


def test_a_resnet_training_step_reaches_winograd_for_its_wide_3x3s(auto):
    """keras.applications' 3x3s (re-classed to BiasConv2D) take it in a float32 training call:
    at 64 px, conv3's 128-channel 3x3s on 8x8 and conv4's on 4x4, not conv2's 64 channels."""
    model = deeplab.build_deeplabv3((64, 64, 3), backbone_weights=None, aspp_filters=32)
    seen, original = [], kernels.winograd_conv3x3
    auto.setattr(kernels, "winograd_conv3x3", lambda x, *a: seen.append(tuple(x.shape[1:])) or original(x, *a))
    model(np.zeros((2, 64, 64, 3), "float32"), training=True)
    assert (8, 8, 128) in seen and (4, 4, 256) in seen
    assert not any(shape[-1] == 64 for shape in seen)


def test_the_demos_mobilenet_takes_no_winograd(auto):
    """The quick start's network (MobileNetV2, ASPP with 64 filters): depthwise 3x3s, a strided
    first conv and 64-channel ASPP branches, none of which auto takes, so its training is the
    direct convolutions' as before."""
    model = deeplab.build_deeplabv3((64, 64, 3), backbone_weights=None, backbone="mobilenetv2", aspp_filters=64)
    seen, original = [], kernels.winograd_conv3x3
    auto.setattr(kernels, "winograd_conv3x3", lambda *a: seen.append(1) or original(*a))
    model(np.zeros((2, 64, 64, 3), "float32"), training=True)
    assert not seen


@pytest.mark.parametrize("filters,rate,forced,expected", [
    (128, 2, None, "winograd"),  # 2.25 of 6.25 in-bounds multiplies
    (128, 6, None, "taps"),      # Winograd 9 of 2.25; a quarter of the taps read the map
    (8, 2, None, "taps"),        # too few channels for Winograd
    (8, 1, None, "native"),
    (8, 2, "keras", "keras"),
    (8, 2, "portable", "portable"),
])
def test_kernel_for_names_the_kernel_a_training_call_runs(auto, filters, rate, forced, expected):
    """What bench_dilated reports as `auto` is what a training step runs (one choice, not two)."""
    if forced:
        auto.setenv(kernels.DILATED_CONV_ENV, forced)
    ran = []
    for name in ["winograd_conv3x3", "tap_dilated_conv2d", "portable_dilated_conv2d"]:
        auto.setattr(kernels, name, lambda *a, _f=getattr(kernels, name), _n=name, **k: ran.append(_n) or _f(*a, **k))
    layer = _conv(filters, rate)
    x = tf.zeros((1, 8, 8, filters))
    layer.build(x.shape)
    assert layer.kernel_for(x, training=True) == expected
    _training_outputs(layer, x)
    assert ran == {"winograd": ["winograd_conv3x3"], "taps": ["tap_dilated_conv2d"],
                   "portable": ["portable_dilated_conv2d"]}.get(expected, [])
