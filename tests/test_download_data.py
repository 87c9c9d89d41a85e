"""download_data.py against a loopback HTTP server serving archives built here."""
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

import download_data as dd
import synthetic


def _tar_bytes(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar)
    return buf.getvalue()


def _add_file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def voc_archive(tmp_path_factory) -> bytes:
    """A tar laid out like VOCtrainval_11-May-2012.tar, with a tiny synthetic tree."""
    src = tmp_path_factory.mktemp("src")
    synthetic.generate_voc_tree(src / "VOCdevkit" / "VOC2012", 4, 2, seed=1, min_size=40, max_size=60,
                                progress=False)
    # Incompressible padding makes the archive span many download chunks.
    (src / "VOCdevkit" / "padding.bin").write_bytes(np.random.default_rng(0).bytes(1 << 20))
    return _tar_bytes(lambda tar: tar.add(src / "VOCdevkit", arcname="VOCdevkit"))


def _args(server, data_dir, body, path="/VOCtrainval_test.tar", extra=()):
    return dd.parse_args(["--data-dir", str(data_dir), "--url", server.url(path),
                          "--sha256", hashlib.sha256(body).hexdigest(), "--size", str(len(body)),
                          "--backoff", "0", "--retries", "2", "--no-progress", *extra])


def _voc_root(data_dir):
    return Path(data_dir) / "VOCtrainval_test" / "VOCdevkit" / "VOC2012"


def test_normal_download_extracts_and_verifies(file_server, tmp_path, voc_archive):
    file_server.routes["/VOCtrainval_test.tar"] = (voc_archive, "ok")
    root = dd.main(_args(file_server, tmp_path, voc_archive))
    assert root == _voc_root(tmp_path)
    assert dd.check_manifest(root) == {"train": 4, "val": 2}
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*extracting"))


def test_second_run_makes_no_request(file_server, tmp_path, voc_archive, capsys):
    file_server.routes["/VOCtrainval_test.tar"] = (voc_archive, "ok")
    dd.main(_args(file_server, tmp_path, voc_archive))
    before = len(file_server.requests)
    dd.main(_args(file_server, tmp_path, voc_archive))
    assert len(file_server.requests) == before
    assert "no download needed" in capsys.readouterr().out


def test_cut_connection_is_resumed_with_range(file_server, tmp_path, voc_archive):
    file_server.routes["/VOCtrainval_test.tar"] = (voc_archive, "cut_once")
    dd.main(_args(file_server, tmp_path, voc_archive))
    ranges = [r for _, r in file_server.requests]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(voc_archive) // 2  # only what was lost is fetched again
    archive = tmp_path / "VOCtrainval_test.tar"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == hashlib.sha256(voc_archive).hexdigest()


def test_wrong_hash_leaves_nothing_and_says_expected_and_actual(file_server, tmp_path, voc_archive):
    file_server.routes["/VOCtrainval_test.tar"] = (voc_archive, "ok")
    args = _args(file_server, tmp_path, voc_archive)
    args.sha256 = "0" * 64
    with pytest.raises(dd.DownloadError, match=r"expected 0{64}, got " + hashlib.sha256(voc_archive).hexdigest()):
        dd.main(args)
    assert not (tmp_path / "VOCtrainval_test.tar").exists()
    assert not list(tmp_path.glob("*.part")) and not _voc_root(tmp_path).exists()


def test_server_errors_are_retried_a_bounded_number_of_times(file_server, tmp_path, voc_archive):
    file_server.routes["/VOCtrainval_test.tar"] = (voc_archive, "error")
    with pytest.raises(dd.DownloadError, match="500"):
        dd.main(_args(file_server, tmp_path, voc_archive))
    assert len(file_server.requests) == 3  # one try and --retries 2
    assert not (tmp_path / "VOCtrainval_test.tar").exists()


def test_transient_errors_then_success_and_fallback_url(file_server, tmp_path, voc_archive):
    file_server.routes["/flaky.tar"] = (voc_archive, ("fail", 2))
    args = _args(file_server, tmp_path, voc_archive, path="/VOCtrainval_test.tar")
    args.urls = [file_server.url("/VOCtrainval_test.tar")]  # 404: move on to the next URL at once
    file_server.routes.pop("/VOCtrainval_test.tar", None)
    args.urls.append(file_server.url("/flaky.tar"))
    # The archive is named after the first URL, so it lands where a rerun looks for it.
    assert dd.main(args) == _voc_root(tmp_path)
    assert [p for p, _ in file_server.requests].count("/VOCtrainval_test.tar") == 1


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
    file_server.routes["/VOCtrainval_test.tar"] = (body, "ok")
    with pytest.raises(ValueError, match=message):
        dd.main(_args(file_server, data_dir, body))
    assert sorted(p.name for p in data_dir.iterdir()) == ["VOCtrainval_test.tar"]  # nothing extracted
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-absolute.txt").exists()


def test_missing_file_in_manifest_names_the_id(file_server, tmp_path, voc_archive):
    def partial(tar):
        with tarfile.open(fileobj=io.BytesIO(voc_archive)) as src:
            for m in src.getmembers():
                if not m.name.endswith("2012_000001.png"):
                    tar.addfile(m, src.extractfile(m) if m.isfile() else None)

    body = _tar_bytes(partial)
    file_server.routes["/VOCtrainval_test.tar"] = (body, "ok")
    with pytest.raises(FileNotFoundError, match="2012_000001"):
        dd.main(_args(file_server, tmp_path, body))


def test_official_defaults_are_pinned():
    args = dd.parse_args([])
    assert args.sha256 == "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb"
    assert args.size == 1_999_639_040 and args.urls is None
    assert dd.OFFICIAL_URLS[0].startswith("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/")


def test_synthetic_flag_writes_and_reuses_tree(tmp_path, capsys):
    argv = ["--synthetic", "--data-dir", str(tmp_path), "--num-train", "3", "--num-val", "2", "--no-progress"]
    root = dd.main(dd.parse_args(argv))
    assert root == tmp_path / "synthetic" / "VOCdevkit" / "VOC2012"
    assert dd.check_manifest(root) == {"train": 3, "val": 2}
    dd.main(dd.parse_args(argv))
    assert "already in place" in capsys.readouterr().out
