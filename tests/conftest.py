"""Shared fixtures: a loopback HTTP server and small synthetic VOC trees."""
from __future__ import annotations

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kit import runtime  # noqa: E402

# As train.py does, before any test module loads TensorFlow: on x86 the suite runs with
# oneDNN and the native dilated kernel; test_portability runs the other kernels.
runtime.prefer_onednn()


class FileServer:
    """Serves byte strings on 127.0.0.1 with Range support and injectable faults.

    routes[path] = (body, mode) where mode is "ok", "cut_once" (the first GET sends half the
    body and drops the connection), "error" (always 500) or ("fail", n) (n times 500, then ok).
    """

    def __init__(self):
        self.routes: dict[str, tuple[bytes, object]] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self._hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                hit = server._hits[self.path] = server._hits.get(self.path, 0) + 1
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, mode = server.routes[self.path]
                if mode == "error" or (isinstance(mode, tuple) and hit <= mode[1]):
                    self.send_error(500)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if mode == "cut_once" and hit == 1:
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # drop mid-body, as a flaky network does
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def file_server():
    server = FileServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="session")
def small_voc(tmp_path_factory) -> Path:
    """A small synthetic VOC2012 folder (12 train, 8 val, 60-120 px), shared by the session."""
    from kit import synthetic

    root = tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012"
    return synthetic.generate_voc_tree(root, num_train=12, num_val=8, seed=3, min_size=60,
                                       max_size=120, grayscale_every=5, progress=False)


# CVAT's "Segmentation mask 1.1" label map, as CVAT writes it (header, name:r,g,b:parts:actions).
CVAT_LABELMAP = """# label:color_rgb:parts:actions
background:0,0,0::
road:128,64,128::
obstacle:250,170,30::
person:220,20,60::
ignore:255,255,255::
"""


def build_cvat_export(root: Path, n: int = 6, size=(24, 18), seed: int = 0, shapes: bool = False) -> dict:
    """Write a CVAT export under `root`: labelmap.txt, PNG images (CVAT keeps the originals),
    RGB masks in the label map's colours, one ImageSets/Segmentation/default.txt list.

    shapes=False: random labels per pixel; True: a road band and a learnable obstacle and person.
    Returns {id: (H, W) uint8 class indices, 255 where ignored}.
    """
    import numpy as np
    from PIL import Image

    from kit import data

    rng = np.random.default_rng(seed)
    for sub in (data.IMAGES_DIR, data.MASKS_DIR, data.SPLITS_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / data.LABELMAP).write_text(CVAT_LABELMAP)
    table = data.ClassTable.from_labelmap(root / data.LABELMAP)
    colours = np.array(table.colours + table.ignore_colours, np.uint8)  # ignore last
    w, h = size
    masks = {}
    for k in range(n):
        if shapes:
            mask = np.zeros((h, w), np.uint8)
            mask[h // 2:] = 1  # road
            x, y = rng.integers(0, w // 2), rng.integers(0, h // 2)
            mask[y:y + h // 3, x:x + w // 3] = 2  # obstacle
            mask[h // 2:h // 2 + h // 4, w - w // 4:] = 3  # person
            image = np.array([[90, 90, 90], [60, 60, 200], [250, 170, 30], [220, 20, 60]], np.uint8)[mask]
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        else:
            mask = rng.integers(0, table.num_classes, (h, w)).astype(np.uint8)
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask[-1] = 255
        rgb = colours[np.where(mask == 255, table.num_classes, mask)]
        Image.fromarray(rgb).save(root / data.MASKS_DIR / f"frame_{k:03d}.png")
        Image.fromarray(image).save(root / data.IMAGES_DIR / f"frame_{k:03d}.png")
        masks[f"frame_{k:03d}"] = mask
    (root / data.SPLITS_DIR / "default.txt").write_text("".join(f"{i}\n" for i in masks))
    return masks


@pytest.fixture
def cvat_export():
    return build_cvat_export


# The tiny training run the workflow tests share: synthetic data, MobileNetV2, 64 px, no weights.
TINY_RUN = ["--dataset", "synthetic", "--num-train", "12", "--num-val", "8", "--input-size", "64",
            "--resize-before-crop", "80", "--batch-size", "4", "--backbone", "mobilenetv2", "--backbone-weights",
            "none", "--aspp-filters", "16", "--bn-momentum", "0.9", "--lr", "1e-3", "--verbose", "0"]


def tiny_argv(data_dir, run_dir, *extra) -> list[str]:
    """train.py arguments for TINY_RUN on `data_dir` into `run_dir`; `extra` flags come last and win."""
    return ["--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY_RUN, *extra]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The synthetic tree TINY_RUN asks for (12 train, 8 val, 64-128 px), once per test module."""
    import download_data

    d = tmp_path_factory.mktemp("data")
    download_data.ensure_synthetic(d, 12, 8, progress=False, min_size=64, max_size=128)
    return d


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """An untrained 21-class DeepLab v3 (MobileNetV2, 16-channel ASPP, no weights) saved as .keras,
    once per test module that asks for it."""
    from model import build_deeplabv3

    model = build_deeplabv3((None, None, 3), backbone="mobilenetv2", backbone_weights=None, aspp_filters=16)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def read_video(path) -> tuple[list, float]:
    """(every frame as an (H, W, 3) uint8 BGR array, the frame rate) of a video OpenCV reads."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps
