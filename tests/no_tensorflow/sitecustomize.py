"""Makes `import tensorflow` and `import keras` fail, as on a vehicle that has neither installed.

    PYTHONPATH=tests/no_tensorflow python predict.py --model export/model.onnx photo.jpg

Python imports `sitecustomize` at start-up from the first folder on its path that has one, so
putting this folder on PYTHONPATH installs the blocker before any other import.
Used by tests/test_onboard.py and bench/bench_car.py.
"""
import sys

BLOCKED = ("tensorflow", "keras", "tf_keras")


class _NoTensorFlow:
    """A meta-path finder consulted before the real ones: the blocked packages are not found."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the vehicle has no TensorFlow)", name=name)
        return None


sys.meta_path.insert(0, _NoTensorFlow())
