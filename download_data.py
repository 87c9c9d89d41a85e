"""Download, verify and safely extract PASCAL VOC 2012, or write a synthetic VOC-format tree.

    python download_data.py                      # the official archive, ~2 GB, into data/
    python download_data.py --synthetic          # offline stand-in under data/synthetic/

The archive is streamed to a `.part` file (resumed with an HTTP Range request after an
interruption), checked against a pinned size and SHA-256, and only then renamed into place.
Extraction refuses links, device nodes, absolute paths and `..`, writes into a temporary
directory and renames it into place when complete. A second run with everything in place
makes no network request.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

import requests
from tqdm import tqdm

import synthetic

OFFICIAL_URLS = ("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",)
OFFICIAL_SHA256 = "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb"
OFFICIAL_SIZE = 1_999_639_040
OFFICIAL_COUNTS = {"train": 1464, "val": 1449}
VOC_SUBDIR = Path("VOCdevkit") / "VOC2012"  # inside the extracted archive
SYNTHETIC_DIRNAME = "synthetic"
CHUNK = 1 << 16  # small enough that a cut connection loses little of what arrived


class DownloadError(RuntimeError):
    """Every URL failed, or what arrived was not the archive we pinned."""


def sha256_of(path: Path, progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"sha256 {path.name}", disable=not progress) as bar:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _stream_once(session: requests.Session, url: str, part: Path, size: int, timeout: float,
                 progress: bool) -> None:
    """One attempt: append to `part` from where it ends (Range request) until the server stops."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
        if have and response.status_code == 200:
            have = 0  # the server ignored the Range header: start over rather than corrupt
        elif response.status_code == 416:
            return  # nothing left to send; the size check decides what happens next
        response.raise_for_status()
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=size or None, initial=have, unit="B", unit_scale=True,
                desc=f"download {part.name[:-5]}", disable=not progress) as bar:
            for block in response.iter_content(CHUNK):
                f.write(block)
                bar.update(len(block))


def download(urls: list[str], dest: Path, sha256: str, size: int | None, retries: int = 4,
             timeout: float = 30.0, backoff: float = 2.0, progress: bool = True) -> Path:
    """Fetch the first URL that works into `dest`, verified by size and SHA-256.

    Bytes go to `dest + ".part"`; an interrupted transfer is resumed. A server error, a
    timeout or a cut connection is retried `retries` times per URL with exponential backoff.
    Raises DownloadError (nothing at `dest`) if no URL yields the pinned file.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    with requests.Session() as session:
        for url in urls:
            for attempt in range(retries + 1):
                if attempt:
                    time.sleep(backoff * 2 ** (attempt - 1))
                try:
                    _stream_once(session, url, part, size or 0, timeout, progress)
                except requests.HTTPError as err:
                    failures.append(f"{url}: {err}")
                    code = err.response.status_code if err.response is not None else 0
                    if 400 <= code < 500 and code not in (408, 429):
                        break  # the URL is wrong, not flaky: try the next one
                    continue
                except (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError) as err:
                    failures.append(f"{url}: {type(err).__name__}: {err}")
                    continue
                got = part.stat().st_size if part.exists() else 0
                if size and got < size:
                    failures.append(f"{url}: connection ended at {got} of {size} bytes")
                    continue
                return _verify_and_commit(part, dest, sha256, size, progress)
    detail = "\n  ".join(failures[-8:])
    raise DownloadError(
        f"could not download {dest.name} from any of {len(urls)} URL(s):\n  {detail}\n"
        f"Without internet, fetch the archive elsewhere and place it at {dest}, "
        f"or pass --url for a mirror.")


def _verify_and_commit(part: Path, dest: Path, sha256: str, size: int | None, progress: bool) -> Path:
    got_size = part.stat().st_size
    if size and got_size != size:
        part.unlink()
        raise DownloadError(f"{dest.name}: expected {size} bytes, got {got_size}; removed the partial file")
    digest = sha256_of(part, progress)
    if digest != sha256.lower():
        part.unlink()  # a wrong file would otherwise be "resumed" forever
        raise DownloadError(f"{dest.name}: SHA-256 mismatch: expected {sha256.lower()}, got {digest}; "
                            f"nothing was kept")
    os.replace(part, dest)
    return dest


def check_members(members: list[tarfile.TarInfo], archive: Path) -> None:
    """Reject, before anything is written, members that could escape or are not plain files/dirs."""
    for m in members:
        name = PurePosixPath(m.name)
        if m.issym() or m.islnk():
            raise ValueError(f"{archive}: member {m.name!r} is a link; refusing to extract")
        if not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: member {m.name!r} is not a regular file or directory")
        if name.is_absolute() or m.name.startswith(("/", "\\")):
            raise ValueError(f"{archive}: member {m.name!r} has an absolute path")
        if ".." in name.parts:
            raise ValueError(f"{archive}: member {m.name!r} contains '..'")


def safe_extract(archive: Path, dest: Path, progress: bool = True) -> Path:
    """Extract a tar archive into `dest`, atomically (temporary sibling directory, then rename)."""
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        check_members(members, archive)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
        try:
            for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
                tar.extract(m, tmp, filter="data")  # the filter is a second line of defence
            if dest.exists():
                shutil.rmtree(dest)  # an earlier, incomplete tree (its manifest check failed)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def check_manifest(voc_root: Path, expected_counts: dict[str, int] | None = None) -> dict[str, int]:
    """Every id in the train and val lists has its JPEG and label PNG; optionally check counts.

    Returns the number of ids per split. Raises FileNotFoundError or ValueError naming what is wrong.
    """
    voc_root = Path(voc_root)
    counts = {}
    for split in ("train", "val"):
        listing = voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"missing split list {listing}")
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        for image_id in ids:
            for path in (voc_root / "JPEGImages" / f"{image_id}.jpg",
                         voc_root / "SegmentationClass" / f"{image_id}.png"):
                if not path.is_file():
                    raise FileNotFoundError(f"{split} id {image_id}: missing {path}")
        counts[split] = len(ids)
    if expected_counts:
        for split, want in expected_counts.items():
            if counts[split] != want:
                raise ValueError(f"{voc_root}: {split} lists {counts[split]} ids, expected {want}")
    return counts


def ensure_voc(data_dir: str | Path = "data", urls: tuple[str, ...] = OFFICIAL_URLS,
               sha256: str = OFFICIAL_SHA256, size: int | None = OFFICIAL_SIZE,
               progress: bool = True, **download_kwargs) -> Path:
    """Make sure VOC 2012 is extracted and complete under `data_dir`; return the VOC2012 folder.

    Idempotent: with a complete tree in place it touches no network.
    """
    data_dir = Path(data_dir)
    archive = data_dir / Path(urls[0].split("?")[0]).name
    extracted = data_dir / archive.name.removesuffix(".tar")
    voc_root = extracted / VOC_SUBDIR
    # Counts are pinned only for the official archive; a mirror of another archive is
    # still checked for completeness.
    expected = OFFICIAL_COUNTS if sha256.lower() == OFFICIAL_SHA256 else None
    if voc_root.is_dir():
        try:
            counts = check_manifest(voc_root, expected)
            print(f"VOC already in place at {voc_root} ({counts}); no download needed")
            return voc_root
        except (FileNotFoundError, ValueError) as err:
            print(f"existing tree is incomplete ({err}); extracting again")
    if not archive.is_file():
        download(list(urls), archive, sha256, size, progress=progress, **download_kwargs)
    elif size and archive.stat().st_size != size:
        raise DownloadError(f"{archive} has {archive.stat().st_size} bytes, expected {size}; delete it and rerun")
    safe_extract(archive, extracted, progress=progress)
    counts = check_manifest(voc_root, expected)
    print(f"VOC ready at {voc_root} ({counts})")
    return voc_root


def synthetic_root(data_dir: str | Path) -> Path:
    """Where `--synthetic` writes its VOC2012 folder."""
    return Path(data_dir) / SYNTHETIC_DIRNAME / VOC_SUBDIR


def ensure_synthetic(data_dir: str | Path = "data", num_train: int = 200, num_val: int = 100,
                     seed: int = 0, progress: bool = True, **kwargs) -> Path:
    """Generate the synthetic tree if it is not complete already; return its VOC2012 folder."""
    root = synthetic_root(data_dir)
    want = {"train": num_train, "val": num_val}
    base = root.parent.parent  # .../synthetic
    params = {"num_train": num_train, "num_val": num_val, "seed": seed,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    recipe = base / "synthetic.json"
    try:
        check_manifest(root, want)
        if json.loads(recipe.read_text()) == params:
            print(f"synthetic VOC already in place at {root}")
            return root
    except (FileNotFoundError, ValueError):
        pass
    # Build beside the destination and rename, so an interrupted run leaves nothing that looks complete.
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic.", dir=base.parent))
    try:
        synthetic.generate_voc_tree(tmp / VOC_SUBDIR, num_train, num_val, seed, progress=progress, **kwargs)
        (tmp / recipe.name).write_text(json.dumps(params, indent=2))
        if base.exists():
            shutil.rmtree(base)
        os.replace(tmp, base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    check_manifest(root, want)
    print(f"synthetic VOC written to {root} ({num_train} train, {num_val} val)")
    return root


def dataset_root(dataset: str, data_dir: str | Path = "data", num_train: int = 200, num_val: int = 100,
                 progress: bool = True) -> Path:
    """The VOC2012 folder of `dataset` ("voc" or "synthetic"), downloading or generating it if needed."""
    if dataset == "synthetic":
        return ensure_synthetic(data_dir, num_train, num_val, seed=0, progress=progress)
    if dataset == "voc":
        return ensure_voc(data_dir, progress=progress)
    raise ValueError(f"unknown dataset {dataset!r}: expected 'voc' or 'synthetic'")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="where archives and extracted trees go")
    p.add_argument("--url", action="append", dest="urls",
                   help="archive URL, repeatable, tried in order (default: the official Oxford host)")
    p.add_argument("--sha256", default=OFFICIAL_SHA256, help="expected SHA-256 of the archive")
    p.add_argument("--size", type=int, default=OFFICIAL_SIZE, help="expected size of the archive in bytes")
    p.add_argument("--retries", type=int, default=4, help="retries per URL after a failure")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a stalled connection is retried")
    p.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubling after")
    p.add_argument("--synthetic", action="store_true", help="write synthetic VOC-format data instead")
    p.add_argument("--num-train", type=int, default=200, help="synthetic: training images")
    p.add_argument("--num-val", type=int, default=100, help="synthetic: validation images (split into val and test)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(args) -> Path:
    if args.synthetic:
        return ensure_synthetic(args.data_dir, args.num_train, args.num_val, args.seed,
                                progress=not args.no_progress)
    return ensure_voc(args.data_dir, tuple(args.urls or OFFICIAL_URLS), args.sha256, args.size,
                      progress=not args.no_progress, retries=args.retries, timeout=args.timeout,
                      backoff=args.backoff)


if __name__ == "__main__":
    main(parse_args())
