"""Files and folders written so that a kill never leaves half of one where a good one was.

    atomic.write_text(path, text)                # also write_bytes
    with atomic.file(path) as tmp:               # any writer that takes a path (model.save, PIL)
        model.save(tmp)
    with atomic.folder(dest, replace=True) as tmp:   # a whole folder, renamed into place when complete
        ...
    atomic.clean_leftovers(folder)               # what a killed writer left behind

Everything is first written under a hidden temporary name in the destination's own folder
(`.NAME.tmp-PID-RANDOM`, with the destination's suffix kept: Keras insists on `.keras`),
flushed to disk, then renamed over the destination in one step, and the folder's entry is
flushed too. An exception removes the temporary; a kill leaves it, and clean_leftovers
removes those whose writing process is gone. This is the one writer the kit uses.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

# .NAME.tmp-PID-RANDOM, optionally followed by the destination's suffix.
LEFTOVER = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}(\.[A-Za-z0-9]+)?")


def temporary_name(path: Path) -> Path:
    """A hidden sibling of `path` that LEFTOVER recognises, keeping its suffix."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _fsync(path: Path) -> None:
    """Flush a file (or every file of a folder) to disk; its folder entry is flushed by the
    caller after the rename, the entry that lasts."""
    targets = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for target in targets:
        with open(target, "rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, it becomes `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def folder(dest: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty temporary folder beside `dest`; when the block succeeds it becomes `dest`.

    An existing `dest` is an error unless `replace`, in which case it is swapped out only once
    the new one is complete (renamed aside, then removed).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not replace:
        raise FileExistsError(f"{dest} already exists")
    tmp = temporary_name(dest)
    tmp.mkdir()
    try:
        yield tmp
        _fsync(tmp)
        old = None
        if dest.exists():
            old = temporary_name(dest)
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, and belongs to someone else
        return True
    return True


def clean_leftovers(where: str | Path, quiet: bool = False) -> list[Path]:
    """Remove the temporaries (files or folders) killed writers left in `where`; return them.

    Only names LEFTOVER matches whose process is no longer running are touched.
    """
    where = Path(where)
    if not where.is_dir():
        return []
    removed = []
    for entry in where.iterdir():
        match = LEFTOVER.fullmatch(entry.name)
        if not match or entry.is_symlink() or _alive(int(match["pid"])):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed and not quiet:
        print(f"removed {len(removed)} leftover(s) of an interrupted run in {where}: "
              f"{', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''}")
    return removed
