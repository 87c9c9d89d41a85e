"""Losses and metrics against plain NumPy references, with ignored (255) pixels."""
import numpy as np
import pytest
import tensorflow as tf

import losses
import metrics
from kit.voc import IGNORE_LABEL

C = 5


def _batch(rng, b=3, h=6, w=7, ignore_frac=0.2):
    y = rng.integers(0, C, (b, h, w))
    y[rng.random((b, h, w)) < ignore_frac] = IGNORE_LABEL
    logits = rng.normal(0, 2, (b, h, w, C))
    return y.astype("int32"), logits.astype("float32")


def _np_weights(y):
    """The chapter's per-image weights, written with loops for clarity."""
    w = np.zeros(y.shape)
    for i in range(y.shape[0]):
        valid = y[i] < C
        tot = valid.sum()
        for c in range(C):
            n_c = (y[i] == c).sum()
            w[i][y[i] == c] = (tot - n_c) / tot if tot else 0.0
    return w


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ce(y, logits):
    valid = y < C
    p = _np_softmax(logits.astype(np.float64))
    w = _np_weights(y)
    total = 0.0
    for idx in zip(*np.nonzero(valid)):
        total += w[idx] * -np.log(p[idx][y[idx]])
    return total / max(valid.sum(), 1)


def np_dice(y, logits):
    valid = y < C
    p = _np_softmax(logits.astype(np.float64))
    w = _np_weights(y)
    t = np.zeros_like(p)
    for idx in zip(*np.nonzero(valid)):
        t[idx][y[idx]] = 1.0
    m = valid[..., None]
    inter = (w[..., None] * p * t * m).sum()
    union = (w[..., None] * (p + t) * m).sum()
    return 1 - (2 * inter + 1) / (union + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_losses_match_numpy_reference(seed):
    y, logits = _batch(np.random.default_rng(seed))
    ce = float(losses.ce_weighted_from_logits(C)(y, logits))
    dice = float(losses.dice_loss_from_logits(C)(y, logits))
    both = float(losses.ce_dice_loss_from_logits(C)(y, logits))
    np.testing.assert_allclose(ce, np_ce(y, logits), rtol=1e-5)
    np.testing.assert_allclose(dice, np_dice(y, logits), rtol=1e-5)
    np.testing.assert_allclose(both, ce + dice, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_ignore_label_has_no_gradient(name):
    y, logits = _batch(np.random.default_rng(4), ignore_frac=0.3)
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = losses.get_loss(name, C)(y, z)
    grad = tape.gradient(loss, z).numpy()
    ignored = y == IGNORE_LABEL
    assert ignored.any() and np.abs(grad[~ignored]).sum() > 0
    np.testing.assert_array_equal(grad[ignored], 0.0)
    # Changing the logits of ignored pixels does not change the loss.
    noisy = logits.copy()
    noisy[ignored] += 100.0
    np.testing.assert_allclose(float(losses.get_loss(name, C)(y, noisy)), float(loss), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_all_ignored_batch_gives_zero_loss_and_finite_gradient(name):
    y = np.full((2, 4, 4), IGNORE_LABEL, "int32")
    z = tf.Variable(np.random.default_rng(5).normal(size=(2, 4, 4, C)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = losses.get_loss(name, C)(y, z)
    assert float(loss) == 0.0
    assert np.isfinite(tape.gradient(loss, z).numpy()).all()


def test_unknown_loss_name_is_an_error():
    with pytest.raises(ValueError, match="focal"):
        losses.get_loss("focal")


def _np_scores(cm):
    tp = np.diag(cm).astype(float)
    gt, pred = cm.sum(1), cm.sum(0)
    present = gt > 0
    union = gt + pred - tp
    return (tp.sum() / cm.sum(), np.mean(tp[present] / gt[present]), np.mean(tp[union > 0] / union[union > 0]))


def test_metrics_accumulate_one_confusion_matrix_over_batches():
    rng = np.random.default_rng(6)
    ms = metrics.segmentation_metrics(C)
    cm = np.zeros((C, C), np.int64)
    batches = []
    # Different class mixes per batch: one batch has only classes 0-1, another only 2-4.
    for lo, hi in ((0, 2), (2, 5), (0, 5)):
        y = rng.integers(lo, hi, (2, 8, 8)).astype("int32")
        y[rng.random(y.shape) < 0.15] = IGNORE_LABEL
        logits = rng.normal(size=(2, 8, 8, C)).astype("float32")
        logits[..., 1] += 1.0  # a biased classifier, so classes differ in accuracy
        batches.append((y, logits))
        pred = logits.argmax(-1)
        for t, p in zip(y[y < C], pred[y < C]):
            cm[t, p] += 1
        for m in ms:
            m.update_state(y, logits)
    want = _np_scores(cm)
    got = [float(m.result()) for m in ms]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(ms[0].confusion_matrix(), cm)
    # Averaging per-batch mean accuracy would give another number: the chapter's bug.
    per_batch = []
    for y, logits in batches:
        m = metrics.MeanAccuracyMetric(C)
        m.update_state(y, logits)
        per_batch.append(float(m.result()))
    assert abs(np.mean(per_batch) - want[1]) > 1e-3
    for m in ms:
        m.reset_state()
        assert float(m.result()) == 0.0


def test_metric_names_and_ignored_pixels():
    ms = metrics.segmentation_metrics(C)
    assert [m.name for m in ms] == ["pixel_accuracy", "mean_accuracy", "mean_iou"]
    y = np.array([[[0, IGNORE_LABEL], [1, 1]]], "int32")
    logits = np.zeros((1, 2, 2, C), "float32")
    logits[0, :, :, 1] = 1.0  # predicts class 1 everywhere
    for m in ms:
        m.update_state(y, logits)
    assert int(ms[0].confusion_matrix().sum()) == 3  # the 255 pixel is not counted
    np.testing.assert_allclose([float(m.result()) for m in ms], [2 / 3, 0.5, (0 + 2 / 3) / 2], rtol=1e-6)


def _np_confusion(labels, predictions, c):
    """A loop over pixels: the reference for the one implementation."""
    cm = np.zeros((c, c), np.int64)
    for t, p in zip(np.ravel(labels), np.ravel(predictions)):
        if 0 <= t < c:
            cm[t, p] += 1
    return cm


def test_the_evaluation_confusion_matrix_streams_batches_and_reports_per_class():
    rng = np.random.default_rng(9)
    cm = metrics.ConfusionMatrix(C)
    want = np.zeros((C, C), np.int64)
    for shape in ((2, 5, 6), (1, 9, 4), (7, 3)):  # batches, and a single mask
        labels = rng.integers(0, C - 1, shape)  # class C-1 never occurs in the ground truth
        labels[rng.random(shape) < 0.2] = IGNORE_LABEL
        predictions = rng.integers(0, C - 2, shape)  # ...and C-2, C-1 are never predicted
        cm.update(labels, predictions)
        want += _np_confusion(labels, predictions, C)
    np.testing.assert_array_equal(cm.matrix, want)
    result = cm.compute()
    np.testing.assert_allclose([result[k] for k in metrics.SCORES], _np_scores(want))
    tp = np.diag(want)
    np.testing.assert_allclose(result["per_class_iou"][: C - 1], (tp / (want.sum(0) + want.sum(1) - tp))[: C - 1])
    assert np.isnan(result["per_class_iou"][C - 1]) and np.isnan(result["per_class_accuracy"][C - 1])
    names = [f"class{i}" for i in range(C)]
    report = cm.report(names)
    assert report["per_class_iou"]["class4"] is None and report["confusion_matrix"] == want.tolist()
    table = cm.table(names)
    assert table.count("\n") == C + 2 and "| class4 | n/a | n/a | 0 |" in table
    cm.reset()
    assert cm.matrix.sum() == 0 and cm.compute()["mean_iou"] == 0.0


def test_confusion_matrix_compiles_with_xla():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, C, (2, 7, 9)).astype("int32")
    labels[0, :2] = IGNORE_LABEL
    logits = rng.normal(size=(2, 7, 9, C)).astype("float32")
    compiled = tf.function(lambda y, p: metrics.confusion_matrix_update(y, p, C), jit_compile=True)
    expected = _np_confusion(labels, logits.argmax(-1), C)
    np.testing.assert_array_equal(compiled(labels, logits).numpy(), expected)
