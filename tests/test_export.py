"""export.py --report and kit/deploy.py on a tiny trained run (64 px, MobileNetV2 without pretrained weights)."""
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from kit import cli
from kit import config
from kit import data
from kit import deploy
import download_data
import export
from kit import inference
import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["--dataset", "synthetic", "--num-train", "12", "--num-val", "8", "--input-size", "64",
        "--resize-before-crop", "80", "--batch-size", "4", "--backbone", "mobilenetv2", "--backbone-weights",
        "none", "--aspp-filters", "16", "--bn-momentum", "0.5", "--lr", "3e-3", "--verbose", "0"]
FAST = ["--size", "64", "--latency-runs", "2", "--warmup-runs", "1", "--calibration-images", "12", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run trained for a few steps: random weights give near-tie logits, which any
    quantization flips, so agreement would measure luck rather than the export. A fast
    batch-norm momentum lets the moving statistics catch up within those steps (with 0.9 and
    12 steps the model predicted one class everywhere: a vacuous agreement); after 16 steps
    a fifth of the pixels had a top-2 logit margin under the int8 output's step (0.1), and
    the full-int8 model agreed on 92%; after 40, on 94-97% (by CPU)."""
    data_dir = tmp_path_factory.mktemp("data")
    download_data.ensure_synthetic(data_dir, 12, 8, progress=False, min_size=64, max_size=128)
    run = tmp_path_factory.mktemp("run")
    train.main(train.parse_args(["--data-dir", str(data_dir), "--run-dir", str(run), *TINY,
                                 "--epochs", "1", "--steps-per-epoch", "40"]))
    return run


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    """export.py --report for Keras, float32 and full int8 with int8 input and output. Every
    thread setting is 1 thread here, so Keras is timed in one subprocess, not one per count."""
    out = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deploy, "THREADS", {"1": 1, "2": 1, "all": 1})
        result = export.main(export.parse_args(["--run-dir", str(run_dir), "--out-dir", str(out), "--report",
                                                "--formats", "float32,full_int8", "--int8-io", *FAST]))
    return out, result


def test_full_int8_has_only_int8_tensors_and_matches_keras(report, run_dir):
    out, result = report
    path = out / "model_full_int8.tflite"
    interpreter = tf.lite.Interpreter(model_path=str(path))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # With int8 input and output there are no edges: every tensor is int8 (int32 biases and shapes).
    dtypes = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    assert dtypes <= {"int8", "int32"}, dtypes
    assert deploy.float_ops(path) == [] and result["full_int8"]["float_ops"] == []
    assert deploy.float_ops(out / "model_float32.tflite")  # the check is not vacuous
    # Argmax agreement with Keras, counted here on the test images the report used. Where
    # Keras's top two logits lie within a few of the int8 output's steps, int8 rounding may
    # pick either, and how many pixels are that close depends on how the CPU trained the tiny
    # model (an AVX2 EPYC's run agreed on 94% overall, a Xeon's on 97%). Where Keras decides
    # by over four steps, a wrong quantization shows: the AVX2 run agreed on every such pixel.
    keras_model = inference.load_model(run_dir / "best.keras")
    quantized = inference.load_model(path)
    step = interpreter.get_output_details()[0]["quantization"][0]  # logit per int8 unit
    saved = json.loads((run_dir / "config.json").read_text())
    images, _ = deploy.images_of(data.tree_from_config(saved), "test", 64)
    same = total = decided = decided_same = 0
    predicted = set()
    for image in images:
        logits = np.asarray(keras_model(image, training=False))  # (1, 64, 64, classes)
        top2 = np.sort(logits, -1)[..., -2:]
        clear = top2[..., 1] - top2[..., 0] > 4 * step  # (1, 64, 64)
        a, b = np.argmax(logits, -1), np.argmax(quantized(image), -1)
        same, total = same + int((a == b).sum()), total + a.size
        decided, decided_same = decided + int(clear.sum()), decided_same + int((a == b)[clear].sum())
        predicted |= set(np.unique(a).tolist())
    assert len(predicted) >= 2, "a model predicting one class agrees trivially"
    assert decided >= 0.25 * total, f"only {decided} of {total} pixels decided by over 4 int8 steps"
    assert decided_same / decided >= 0.99
    assert same / total >= 0.9
    assert result["formats"]["tflite_full_int8"]["agreement"] == pytest.approx(same / total, abs=0.01)


def test_report_keys_units_and_formats_subset(report):
    out, result = report
    saved = json.loads((out / "export_report.json").read_text())
    assert set(saved["formats"]) == {"keras", "tflite_float32", "tflite_full_int8"}
    assert not (out / "model_float16.tflite").exists() and not (out / "saved_model").exists()
    for name, r in saved["formats"].items():
        assert set(r) >= {"size_mb", "latency_ms", "mean_iou", "pixel_accuracy", "agreement"}, name
        assert r["size_mb"] == pytest.approx(deploy.size_mb(r["file"]), abs=1e-3)
        assert set(r["latency_ms"]) == {"1", "2", "all"} and all(v > 0 for v in r["latency_ms"].values())
        assert 0 <= r["mean_iou"] <= 1 and 0 <= r["pixel_accuracy"] <= 1 and 0 <= r["agreement"] <= 1
    full = out / "model_full_int8.tflite"
    assert saved["formats"]["tflite_full_int8"]["size_mb"] == pytest.approx(full.stat().st_size / 2 ** 20, abs=1e-3)
    assert saved["formats"]["keras"]["agreement"] == 1.0 and saved["formats"]["tflite_float32"]["agreement"] >= 0.999
    assert saved["size"] == 64 and saved["int8_io"] is True and saved["test_images"] == 4
    assert set(saved["machine"]) >= {"cpu", "cores", "onednn"}
    table = (out / "export_report.md").read_text()
    assert all(f"| {name} |" in table for name in saved["formats"]) and "ms, all thread(s)" in table
    assert json.loads((out / "parity.json").read_text())["argmax_agreement"].keys() == {"float32", "full_int8"}


def test_litert_runs_the_convolutions_of_both_tflite_files_in_xnnpack(report):
    """The default op resolver hands every op of both files to XNNPACK: none is left on
    TFLite's builtin kernels, where an int8 convolution runs several times slower
    (bench/bench_tflite.py --runtimes builtin). ASPP broadcasts its pooled branch by a resize,
    not by adding zeros, whose int8 scale (near 0) XNNPACK's int8 ADD refused. And the report
    says which ops ran where."""
    out, result = report
    for name, file in (("tflite_float32", "model_float32.tflite"), ("tflite_full_int8", "model_full_int8.tflite")):
        kernels = result["formats"][name]["kernels"]
        ops = [op["op_name"] for op in tf.lite.Interpreter(model_path=str(out / file))._get_ops_details()]
        ops = [op for op in ops if op != "DELEGATE"]
        assert sum(kernels["xnnpack"].values()) + sum(kernels["builtin"].values()) == len(ops), (name, kernels)
        for conv in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            assert kernels["xnnpack"][conv] == ops.count(conv) >= 1, (name, kernels)
        assert kernels["builtin"] == {}, (name, kernels)
    assert "kernels" not in result["formats"]["keras"]
    table = (out / "export_report.md").read_text()
    assert "XNNPACK runs every op of tflite_float32, tflite_full_int8" in table


def test_delegated_ops_sees_ops_left_on_builtin_kernels(report):
    """Without the default delegate every op is on a builtin kernel: the split is read from
    the interpreter, not assumed."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from kit import onboard

    out, _ = report
    interpreter = Interpreter(model_path=str(out / "model_full_int8.tflite"),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    split = onboard.delegated_ops(interpreter)
    assert split["xnnpack"] == {} and split["builtin"]["CONV_2D"] >= 1
    assert deploy.kernel_notes({"m": {"kernels": split}}).startswith("m: 0 of ")


def test_report_names_the_cpu_features_its_latencies_came_from(report, monkeypatch):
    out, result = report
    saved = json.loads((out / "export_report.json").read_text())
    from kit import runtime

    assert saved["machine"]["features"] == sorted(runtime.cpu_features())
    assert saved["machine"]["int8_features"] == runtime.int8_features()
    table = (out / "export_report.md").read_text()
    assert f"CPU features {', '.join(saved['machine']['features']) or 'none of those listed'};" in table
    assert f"int8 dot-product instructions: {', '.join(runtime.int8_features()) or 'none'};" in table
    speed = saved["full_int8"]["speedup_over_float32"]
    latency = {name: saved["formats"][name]["latency_ms"] for name in ("tflite_float32", "tflite_full_int8")}
    assert speed == {k: round(latency["tflite_float32"][k] / latency["tflite_full_int8"][k], 2) for k in speed}
    assert set(speed) == {"1", "2", "all"} and f"tflite_float32 (its ms / these): {speed['1']:.2f}x with 1 thread(s)" in table
    # A CPU without int8 dot-product instructions (an AVX2 x86) is named as such.
    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2", "fma"}))
    assert runtime.int8_features() == []
    assert "int8 dot-product instructions: none;" in deploy.markdown({**saved, "machine": deploy.machine()})
    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2", "amx_int8", "avx512_vnni"}))
    assert runtime.int8_features() == ["avx512_vnni", "amx_int8"]


def test_format_names_old_and_new():
    assert deploy.resolve_formats("int8,float32") == ["tflite_float32", "tflite_dynamic_int8"]
    assert deploy.resolve_formats("tflite_full_int8,savedmodel") == ["savedmodel", "tflite_full_int8"]
    assert deploy.resolve_formats("all") == list(deploy.FORMATS)
    with pytest.raises(deploy.ExportError, match="tflite_full_int8"):
        deploy.resolve_formats("int4")


def test_moved_data_fails_naming_data_dir(run_dir, tmp_path, capsys):
    moved = tmp_path / "run"
    moved.mkdir()
    saved = json.loads((run_dir / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**saved, "data_root": str(tmp_path / "gone")}))
    shutil.copy(run_dir / "best.keras", moved / "best.keras")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(export.main, export.parse_args, ["--run-dir", str(moved), "--report", *FAST])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--data-dir" in err
    assert not (moved / "export").exists()  # nothing written before the data was found


def test_counts_that_would_measure_nothing_are_usage_errors(capsys):
    for flag, value in (("--latency-runs", "0"), ("--report-images", "0"), ("--calibration-images", "-1"),
                        ("--warmup-runs", "-1")):
        with pytest.raises(SystemExit):
            export.parse_args([flag, value])
        assert flag in capsys.readouterr().err


def test_int8_io_without_the_full_int8_format_is_refused(run_dir):
    with pytest.raises(config.ConfigError, match="--int8-io"):
        export.main(export.parse_args(["--run-dir", str(run_dir), "--formats", "float32", "--int8-io", *FAST]))


def test_a_new_export_removes_what_an_earlier_one_left_for_other_formats(run_dir, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    for name in ("model_float16.tflite", "export_report.json", "export_report.md"):
        (out / name).write_bytes(b"from an older model")
    (out / "notes.txt").write_text("mine")
    export.main(export.parse_args(["--run-dir", str(run_dir), "--formats", "float32", "--out-dir", str(out), *FAST]))
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "model_float32.tflite", "notes.txt",
                                                     "parity.json"]
