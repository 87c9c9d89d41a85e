"""Video and camera streams: read frames, segment them, write an annotated video and JSON lines.

    python predict.py --model eval/demo/best.keras --video drive.mp4 --out predictions/
    python predict.py --model model.tflite --camera 0 --navigation safe --out runs/   # Ctrl-C stops

predict.py wires this up; `run_stream` does the work. Three threads overlap: a reader decodes
frames (OpenCV) into a bounded queue, the caller's thread runs the model (the step that uses
the cores), and a writer, at a lower scheduling priority, finishes each frame (the model's
last upsampling, then softmax, smoothing, argmax and cost map, in one compiled graph:
FrameModel), turns masks into class fractions, navigation and overlays and encodes the video
and the JSON lines. Bounded queues
keep memory flat and stop the reader running ahead of a slow model. Every per-class step runs
in a TensorFlow graph, not in NumPy, so only (H, W) masks and cost maps reach the writer's
Python: on a 2-core CPU NumPy work there comes straight out of the model's time.

Per frame, `NAME.jsonl` holds {"frame", "time_ms", "predicted", "class_fractions": {class
name: fraction of pixels}} and, with navigation, {"heading", "stop", "sector_costs"} (the
image-strip planner) or {"planner": "grid", "curvature", "heading_deg", "stop", "arc_costs",
"grid": the ground grid as an OccupancyGrid} (the grid planner, kit/ground.py), whose
map_server pairs `save_grid` also writes, one per predicted frame, to NAME_grids/. With
`every` > 1 only every Nth frame is run through the model; the others are still written to the
video and the JSON lines, reusing the last prediction, with "predicted": false. `smooth` A
(frame_model) averages probabilities over predicted frames (p_t = A p_{t-1} + (1 - A) p), so
masks do not flicker; A = 0 is no smoothing.

The video is written with the mp4v (MPEG-4 Part 2) fourcc, which the opencv-python-headless
wheels can encode without a system FFmpeg; browsers may not play it, VLC and ffmpeg do.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np

from kit import ground
from kit import overlay
from kit import navigation
from kit.data import ClassTable
from kit.errors import KitError

FOURCC = "mp4v"
CAMERA_FPS = 30.0  # written when a camera does not report its frame rate
QUEUE_FRAMES = 4  # frames in flight between threads: enough to hide jitter, little memory
# The writer's niceness (0 = the model's priority, 19 = lowest). On a 2-core CPU the model's
# threads keep ~1.6 cores busy, and the writer's per-frame work (masks, overlay, encode) came
# out of inference at equal priority: the loop ran at 0.86-0.88 of the bare model's frames/s,
# 0.89-0.91 with the writer at 10 or 19 (bench/bench_video.py, paired rounds). 10 rather than
# 19 so that other busy processes on the vehicle cannot starve the writer, whose full queue
# would then stall the model. The reader stays at normal priority: a camera must be drained.
WRITER_NICE = 10
_END = object()  # end of stream, through the queues

# Drawing (RGB, since frames stay RGB until the writer encodes them).
_WHITE, _BLACK, _RED = (255, 255, 255), (0, 0, 0), (230, 30, 30)


class VideoError(KitError, OSError):
    """A video or camera that cannot be opened, read or written; the message names it."""


@dataclass(frozen=True)
class NavigationSpec:
    """What navigation.navigate (image strips) or a ground.GroundNavigator (the grid) needs
    besides the probabilities."""

    profile: str | navigation.Profile  # a name in navigation.PROFILES, or a Profile
    class_costs: np.ndarray  # (C,) from navigation.class_costs_for(class names)
    sectors: int = 5
    stop_threshold: float = 0.5
    ground: ground.GroundNavigator | None = None  # plan on the ground grid instead of image strips
    save_grid: bool = False  # with `ground`: write each planned frame's map_server pair

    def navigate(self, probs: np.ndarray) -> dict:
        """navigation.navigate, or the grid planner's navigate, of (H, W, C) probabilities."""
        if self.ground is not None:
            return self.ground.navigate(probs)
        return navigation.navigate(probs, self.profile, self.class_costs, self.sectors, self.stop_threshold)

    def navigate_cost(self, cost: np.ndarray) -> dict:
        """navigate() from the (H, W) cost map navigation.cost_map would make of the probabilities."""
        if self.ground is not None:
            return self.ground.navigate_cost(cost)
        return navigation.navigate_cost(cost, self.sectors, self.stop_threshold)

    def record(self, result: dict) -> dict:
        """The JSON-lines fields of a navigate() result."""
        if self.ground is not None:
            return self.ground.record(result)
        return {"heading": result["heading"], "stop": result["stop"],
                "sector_costs": [round(c, 6) for c in result["sector_costs"]]}


def check_smooth(value: float) -> float:
    """`value` if it is a valid smoothing factor, in [0, 1); else a KitError saying so."""
    if not 0.0 <= value < 1.0:
        raise VideoError(f"--smooth must be in [0, 1) (0: no smoothing, 0.8: heavy), got {value}")
    return float(value)


def open_capture(source: str | Path | int) -> tuple[cv2.VideoCapture, float, str]:
    """An opened cv2.VideoCapture for a file path or a camera index, its fps and a name for outputs.

    Raises VideoError naming the file or camera when it cannot be opened.
    """
    if isinstance(source, int):
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            capture.release()
            raise VideoError(f"cannot open camera {source}: is it connected, and not in use by another "
                             f"program? (try another index, or pass --video FILE)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        return capture, fps if fps and fps > 0 else CAMERA_FPS, f"camera{source}"
    path = Path(source)
    if not path.is_file():
        raise VideoError(f"cannot read video {path}: no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"cannot read video {path}: OpenCV cannot open it (not a video, or a codec "
                         f"this OpenCV lacks)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or fps <= 0 or not np.isfinite(fps):
        capture.release()
        raise VideoError(f"cannot read video {path}: it reports no frame rate")
    return capture, fps, path.stem


class _Worker(threading.Thread):
    """A daemon thread that keeps its exception for the caller to re-raise.

    `nice` > 0 lowers the thread's own scheduling priority (Linux schedules threads one by
    one; elsewhere it is not applied) so that, when the cores are contended, TensorFlow's
    threads running the model come first and this thread takes what they leave idle.
    """

    def __init__(self, target: Callable[[], None], name: str, nice: int = 0):
        super().__init__(name=name, daemon=True)
        self._target_fn, self.nice, self.error = target, nice, None

    def run(self):
        if self.nice and sys.platform.startswith("linux"):
            try:
                # Relative to the thread's own niceness (inherited from the process: a service
                # started with Nice=10 must still give the writer less than the model).
                me = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + self.nice))
            except OSError as err:  # a sandbox that forbids it: the stream still works, only slower
                warnings.warn(f"could not lower the priority of the {self.name} thread ({err}); the video loop "
                              f"may run slower than the model alone", RuntimeWarning, stacklevel=1)
        try:
            self._target_fn()
        except BaseException as err:  # handed to the caller's thread, which raises it
            self.error = err


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless `stop` is set first (so a thread never blocks on a queue nobody drains)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def class_fractions(mask: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """{class name: fraction of the mask's pixels}, every class listed."""
    counts = np.bincount(mask.ravel(), minlength=len(names))[:len(names)]
    return {name: round(float(c) / mask.size, 6) for name, c in zip(names, counts)}


def _cost_colour(cost: float) -> tuple[int, int, int]:
    """Green (free) through yellow to red (blocked), RGB."""
    c = float(np.clip(cost, 0.0, 1.0))
    return (int(255 * min(1.0, 2 * c)), int(255 * min(1.0, 2 * (1 - c))), 0)


def _stop_sign(out: np.ndarray, top: int) -> None:
    """STOP in red, centred above row `top`."""
    width = out.shape[1]
    scale = max(0.4, width / 400)
    thickness = max(1, int(round(2 * scale)))
    (tw, th), _ = cv2.getTextSize("STOP", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    origin = ((width - tw) // 2, max(th + 2, top))
    cv2.putText(out, "STOP", origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _WHITE, thickness + 2, cv2.LINE_AA)
    cv2.putText(out, "STOP", origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _RED, thickness, cv2.LINE_AA)


def draw_navigation(frame: np.ndarray, result: dict) -> np.ndarray:
    """A sector bar along the bottom (each strip coloured by its cost, green to red), a triangle
    over the chosen strip, and STOP in red when every strip is too expensive. Returns a copy."""
    out = np.ascontiguousarray(frame, dtype=np.uint8).copy()
    height, width = out.shape[:2]
    costs = result["sector_costs"]
    edges = navigation.strip_edges(width, len(costs))  # the strips plan() costed
    bar = max(4, height // 14)
    top = height - bar
    for s, cost in enumerate(costs):
        cv2.rectangle(out, (int(edges[s]), top), (int(edges[s + 1]) - 1, height - 1), _cost_colour(cost), -1)
        cv2.rectangle(out, (int(edges[s]), top), (int(edges[s + 1]) - 1, height - 1), _BLACK, 1)
    if result["stop"]:
        cv2.rectangle(out, (0, top), (width - 1, height - 1), _RED, max(1, bar // 4))
        _stop_sign(out, top - bar)
    else:
        h = result["heading"]
        cv2.rectangle(out, (int(edges[h]), top), (int(edges[h + 1]) - 1, height - 1), _WHITE, max(1, bar // 5))
        centre, size = (int(edges[h]) + int(edges[h + 1])) // 2, max(3, bar)
        tip = max(0, top - 2 * size)
        triangle = np.array([[centre, tip], [centre - size, top - 2], [centre + size, top - 2]], np.int32)
        cv2.fillPoly(out, [triangle], _WHITE)
        cv2.polylines(out, [triangle], True, _BLACK, 1, cv2.LINE_AA)
    return out


def grid_picture(cells: np.ndarray) -> np.ndarray:
    """(rows, cols) cell costs (NaN unknown) -> RGB uint8 bird's-eye view, forward up and left
    on the left (rows of the picture run along -x, its columns along -y): green free, red
    blocked, grey unknown."""
    view = np.asarray(cells, np.float32).T[::-1, ::-1]  # (cols, rows): forward up, +y (left) on the left
    c = np.clip(np.nan_to_num(view, nan=0.0), 0.0, 1.0)
    rgb = np.stack([np.minimum(1.0, 2 * c), np.minimum(1.0, 2 * (1 - c)), np.zeros_like(c)], axis=-1)
    rgb[np.isnan(view)] = 0.5
    return (255 * rgb).astype(np.uint8)


def draw_ground_navigation(frame: np.ndarray, result: dict, navigator: ground.GroundNavigator) -> np.ndarray:
    """The grid planner's result on a frame: the chosen arc on the ground (white), and the
    bird's-eye grid with it in the top-right corner (a third of the frame's height); STOP in
    red when no arc is free. Returns a copy."""
    out = np.ascontiguousarray(frame, dtype=np.uint8).copy()
    height, width = out.shape[:2]
    grid, planner = navigator.grid, navigator.planner
    inset = grid_picture(result["cells"])  # (cols, rows, 3)
    scale = max(1, height // 3) / inset.shape[0]
    size = (max(1, int(round(inset.shape[1] * scale))), max(1, int(round(inset.shape[0] * scale))))
    inset = cv2.resize(inset, size, interpolation=cv2.INTER_NEAREST)
    if not result["stop"]:
        arc = ground.arc_points(result["curvature"], planner.lengths[result["arc"]], grid.cell)  # (N, 2) x, y
        u, v = navigator.camera.ground_to_pixel(arc[:, 0], arc[:, 1], width, height)
        seen = np.isfinite(u) & np.isfinite(v)
        if seen.sum() >= 2:
            cv2.polylines(out, [np.stack([u[seen], v[seen]], 1).astype(np.int32)], False, _WHITE,
                          max(2, width // 160), cv2.LINE_AA)
        # In the inset: column = (y_max - y) / cell, row = (x_max - x) / cell, scaled.
        rows, cols = grid.shape
        ix = (rows * grid.cell - (arc[:, 1] - grid.origin[1])) / grid.cell * scale
        iy = (cols * grid.cell - (arc[:, 0] - grid.origin[0])) / grid.cell * scale
        cv2.polylines(inset, [np.stack([ix, iy], 1).astype(np.int32)], False, _WHITE, 1, cv2.LINE_AA)
    h, w = inset.shape[:2]
    if h <= height and w <= width:
        out[:h, width - w:] = inset
        cv2.rectangle(out, (width - w, 0), (width - 1, h - 1), _BLACK, 1)
    if result["stop"]:
        _stop_sign(out, height - max(4, height // 14))
    return out


class Prediction(NamedTuple):
    """What frame_model gives the writer for one frame."""

    mask: np.ndarray  # (H, W) uint8 class indices
    probs: np.ndarray | None = None  # (H, W, C) float32, for navigation to make its cost map from
    cost: np.ndarray | None = None  # (H, W) float32 cost map, when the model's graph made it


class FrameModel:
    """The per-frame model call for run_stream, from an inference.Predictor (TensorFlow) or an
    onboard.Predictor (NumPy, for .tflite and .onnx without TensorFlow), in two steps.

    `model(x)` runs on the model's thread and `finish(out)` on the writer's, in frame order;
    calling the FrameModel does both: (1, H, W, 3) float32 -> Prediction. With TensorFlow,
    only the network runs on the model's thread (inference.Predictor.frame_scores), without
    its last layer when that layer upsamples the logits to the frame's size, as the models
    train.py builds do: a (1, H/16, W/16, C) map leaves it. The rest runs on the writer's
    thread while the model works on the next frame: that upsampling and, with nothing to
    smooth or plan on, the argmax (frame_masks); otherwise the softmax, the exponential moving
    average of the probabilities over the frames it is called on, p = smooth * previous +
    (1 - smooth) * new (so masks do not flicker; 0: no smoothing), its argmax and, with `nav`,
    the cost map (finish_frame, one XLA-compiled graph after the upsampling). On a 2-core CPU
    the network leaves about 0.3 of a core idle, and this per-pixel work then fits in it
    instead of coming out of the model's time. Only an (H, W) mask and an (H, W) cost map reach
    the writer's Python. A model that cannot be cut gives its masks from its own graph when
    nothing is smoothed or planned. An onboard.Predictor smooths on the model's thread and hands
    the (H, W, C) average to the writer, which makes the cost map in NumPy.
    """

    def __init__(self, predictor, smooth: float = 0.0, nav: NavigationSpec | None = None):
        self.predictor, self.smooth, self.nav = predictor, check_smooth(smooth), nav
        self.plain = self.smooth == 0.0 and nav is None
        # Whether the model's thread runs the network alone and finish() the rest: always with
        # TensorFlow when there is something to smooth or plan on, and for plain masks when the
        # model's last upsampling can be left out (inference.Predictor.coarse_frames).
        self.split = hasattr(predictor, "finish_frame") and (not self.plain or predictor.coarse_frames)
        self.average = None  # (1, H, W, C) tf.Tensor or np.ndarray, the running average so far
        self.profile = self.costs = None
        if nav is not None:  # the grid planner's cost map is made with its own profile and class costs
            self.profile, self.costs = ((nav.ground.profile, nav.ground.class_costs) if nav.ground is not None
                                        else (nav.profile, nav.class_costs))

    def model(self, x: np.ndarray):
        """The model's thread's part: a Prediction, or the model's scores for finish()."""
        if self.split:
            return self.predictor.frame_scores(x)  # inference.FrameScores
        if self.plain:
            return Prediction(self.predictor.masks(x)[0])
        self.average, mask = self.predictor.smoothed(x, self.average, self.smooth)
        return Prediction(np.asarray(mask[0]), np.asarray(self.average[0]) if self.nav is not None else None)

    def finish(self, out) -> Prediction:
        """The writer's thread's part, in frame order: model()'s result -> Prediction."""
        if isinstance(out, Prediction):
            return out
        if self.plain:
            return Prediction(np.asarray(self.predictor.frame_masks(out)[0]))
        self.average, mask, cost = self.predictor.finish_frame(out, self.average, self.smooth, self.profile,
                                                               self.costs)
        return Prediction(np.asarray(mask[0]), cost=None if cost is None else np.asarray(cost[0]))

    def __call__(self, x: np.ndarray) -> Prediction:
        return self.finish(self.model(x))


def frame_model(predictor, smooth: float = 0.0, nav: NavigationSpec | None = None) -> FrameModel:
    """FrameModel(predictor, smooth, nav): the per-frame call predict.py gives run_stream."""
    return FrameModel(predictor, smooth, nav)


class _Annotator:
    """A prediction (or None, for a skipped frame) -> annotated frame and JSON record.

    A prediction is a Prediction, as frame_model returns; navigation needs its cost map or
    its probabilities. Runs on the writer thread, in frame order.
    """

    def __init__(self, classes: ClassTable, alpha: float, nav: NavigationSpec | None, grid_dir: Path | None = None):
        self.classes, self.alpha, self.nav = classes, alpha, nav
        self.grid_dir = grid_dir  # map_server pairs of each planned frame go here (grid planner)
        self.mask, self.record, self.result = None, {}, None

    def __call__(self, frame: np.ndarray, prediction: tuple | None, index: int = 0) -> tuple[np.ndarray, dict]:
        if prediction is not None:
            self.mask = np.asarray(prediction.mask, dtype=np.uint8)  # (H, W)
            self.record = {"class_fractions": class_fractions(self.mask, self.classes.names)}
            if self.nav is not None:
                if prediction.cost is not None:
                    self.result = self.nav.navigate_cost(prediction.cost)
                elif prediction.probs is not None:
                    self.result = self.nav.navigate(prediction.probs)
                else:
                    raise ValueError("navigation needs (H, W, C) probabilities or an (H, W) cost map from the model: "
                                     "use frame_model(..., nav)")
                self.record.update(self.nav.record(self.result))
                if self.grid_dir is not None:
                    ground.save_map(self.result["cells"], self.nav.ground.grid, self.grid_dir / f"frame_{index:06d}")
        annotated = overlay.blend(frame, self.mask, self.classes, self.alpha)
        if self.nav is not None and self.nav.ground is not None:
            annotated = draw_ground_navigation(annotated, self.result, self.nav.ground)
        elif self.nav is not None:
            annotated = draw_navigation(annotated, self.record)
        return annotated, self.record


def run_stream(predict: Callable[[np.ndarray], Prediction], source: str | Path | int, out: str | Path,
               classes: ClassTable, alpha: float = 0.5, every: int = 1,
               nav: NavigationSpec | None = None, max_frames: int | None = None) -> dict:
    """Segment every frame of a video file or camera; write OUT/NAME_overlay.mp4 and OUT/NAME.jsonl.

    Args:
        predict: a FrameModel (`frame_model(predictor, smooth, nav)`, which also smooths over time
            and, with `nav`, makes the cost map; its second step runs on the writer's thread), or
            any (1, H, W, 3) float32 RGB -> Prediction callable.
        source: a video file, or an int: a camera index for cv2.VideoCapture.
        alpha: the class colours' opacity over each frame (kit.overlay.blend).
        every: run the model on every Nth frame (1: all); the others reuse its prediction.
        nav: draw and log navigation (heading, stop, sector costs) when given.
        max_frames: stop after this many frames (a camera runs until Ctrl-C otherwise).

    Returns:
        {"video", "jsonl", "frames", "predicted", "fps", "seconds", "frames_per_s", "interrupted"}.

    Raises:
        VideoError: the source cannot be opened or yields no frame, or the output cannot be written.
    """
    if every < 1:
        raise VideoError(f"--every must be >= 1, got {every}")
    capture, fps, name = open_capture(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    video_path, jsonl_path = out / f"{name}_overlay.mp4", out / f"{name}.jsonl"
    camera = isinstance(source, int)
    stop_reading = threading.Event()  # the reader stops (end of input, Ctrl-C on a camera, a failure)
    abort = threading.Event()  # everything stops now (a failure)
    frames_in: queue.Queue = queue.Queue(QUEUE_FRAMES)  # (index, time_ms, RGB uint8, float32 batch or None)
    frames_out: queue.Queue = queue.Queue(QUEUE_FRAMES)  # (index, time_ms, RGB uint8, Prediction or None)

    def read():
        start, index = time.monotonic(), 0
        try:
            while not stop_reading.is_set() and (max_frames is None or index < max_frames):
                ok, bgr = capture.read()
                if not ok:
                    break
                t_ms = (time.monotonic() - start) * 1000 if camera else index * 1000.0 / fps
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                batch = rgb[None].astype(np.float32) if index % every == 0 else None  # the model's input
                if not _put(frames_in, (index, round(t_ms, 3), rgb, batch), stop_reading):
                    return
                index += 1
        finally:
            _put(frames_in, _END, stop_reading)

    grid_dir = out / f"{name}_grids" if nav is not None and nav.ground is not None and nav.save_grid else None
    if grid_dir is not None:
        grid_dir.mkdir(exist_ok=True)
    annotate = _Annotator(classes, alpha, nav, grid_dir)
    # A FrameModel's second step runs here, on the writer's thread, while the model goes on.
    run_model, finish = (predict.model, predict.finish) if isinstance(predict, FrameModel) else (predict, None)
    written = {"frames": 0}

    def write():
        writer = None
        try:
            with open(jsonl_path, "w", encoding="utf-8") as lines:
                while True:
                    try:
                        item = frames_out.get(timeout=0.1)
                    except queue.Empty:
                        if abort.is_set():
                            return
                        continue
                    if item is _END:
                        return
                    index, t_ms, rgb, prediction = item
                    if prediction is not None and finish is not None:
                        prediction = finish(prediction)
                    annotated, record = annotate(rgb, prediction, index)
                    if writer is None:
                        height, width = annotated.shape[:2]
                        writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*FOURCC), fps,
                                                 (width, height))
                        if not writer.isOpened():
                            raise VideoError(f"cannot write video {video_path} ({FOURCC}, {width}x{height}, "
                                             f"{fps:g} fps): OpenCV could not open a writer for it")
                    writer.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
                    lines.write(json.dumps({"frame": index, "time_ms": t_ms, "predicted": prediction is not None,
                                            **record}) + "\n")
                    written["frames"] += 1
        finally:
            if writer is not None:
                writer.release()
            abort.set()  # after a clean end nobody is left to stop; after a failure everybody stops
            stop_reading.set()

    reader, writer = _Worker(read, "video-reader"), _Worker(write, "video-writer", nice=WRITER_NICE)
    # SIGTERM (a supervisor, ROS launch, `kill`) ends the stream like Ctrl-C, so the writer
    # still closes the video: killed mid-write, an mp4 has no index and does not play.
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    reader.start()
    writer.start()
    predicted, interrupted = 0, False
    start = time.perf_counter()
    try:
        while not abort.is_set():
            try:
                item = frames_in.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                break
            index, t_ms, rgb, batch = item
            prediction = None
            if batch is not None:  # only the model runs here; everything else is on the other threads
                prediction = run_model(batch)  # a Prediction, or a FrameModel's scores for the writer to finish
                predicted += 1
            if not _put(frames_out, (index, t_ms, rgb, prediction), abort):
                break
        _put(frames_out, _END, abort)
    except KeyboardInterrupt:
        stop_reading.set()
        if not camera:
            abort.set()
            raise
        interrupted = True  # Ctrl-C is how a camera stream ends: keep what was recorded
        _put(frames_out, _END, abort)
    except BaseException:
        abort.set()
        raise
    finally:
        writer.join()
        stop_reading.set()
        reader.join()
        capture.release()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    seconds = time.perf_counter() - start
    for worker in (writer, reader):
        if worker.error is not None:
            raise worker.error
    if written["frames"] == 0:
        jsonl_path.unlink(missing_ok=True)
        raise VideoError(f"cannot read video {source}: no frame could be decoded" if not camera
                         else f"cannot read camera {source}: it opened but gave no frame")
    return {"video": str(video_path), "jsonl": str(jsonl_path), "frames": written["frames"], "predicted": predicted,
            "fps": fps, "seconds": round(seconds, 3), "frames_per_s": round(written["frames"] / seconds, 2),
            "interrupted": interrupted}
