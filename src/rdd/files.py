"""Files a resume trusts: written atomically, and recognised by their sha256.

An atomic write (`write_atomic`) goes to a temporary file beside the target, is flushed to disk
and renamed over it, so a reader, or the next run, never sees half a file, and a symbolic or hard link
at the target is replaced, never written through. A kill leaves only the temporary file, named
`TEMP_PREFIX` + pid + a random part + the target's name + `TEMP_SUFFIX` (`TEMP_GLOB` matches them),
which rdd.rundir removes on the next start; no user would choose such a name, so that clean-up never
deletes a user's file.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import BinaryIO, Callable

from rdd.errors import RddError
from rdd.strict_yaml import parse_json

TEMP_PREFIX, TEMP_SUFFIX = ".rdd-tmp-", ".tmp"
TEMP_GLOB = f"{TEMP_PREFIX}*{TEMP_SUFFIX}"  # every temporary file of an atomic write, and nothing else; only this is ever cleaned up
NAME_MAX = 255  # bytes in one file name, on every common local file system
LONGEST_NAME = NAME_MAX - 40  # room for the temporary name of an atomic write beside it


def check_path_text(path: str, flag: str) -> None:
    """A path argument a file system can take: not empty, valid UTF-8, no name longer than NAME_MAX bytes."""
    if not path.strip():
        raise RddError(f"{flag} is empty; pass a path")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise RddError(f"{flag} {path.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; pass a UTF-8 path") from None
    if b"\0" in encoded:
        raise RddError(f"{flag} holds a NUL byte; pass a plain path")
    long = next((part for part in Path(path).parts if len(part.encode()) > LONGEST_NAME), None)
    if long:
        raise RddError(f"{flag}: the name '{long[:40]}...' is {len(long.encode())} bytes; rdd writes names of at most "
                       f"{LONGEST_NAME} bytes (a file system takes {NAME_MAX}); use a shorter name")


def check_writable(path: str | Path, what: str) -> None:
    """Refuse, before any work, a file whose folder (or the nearest one that exists) cannot take a file."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the nearest existing folder, which mkdir would extend
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise RddError(f"cannot write {what} '{path}': '{folder}' is not a writable folder; choose another path")
    probe = temporary_path(folder / "probe")
    try:  # permissions do not tell root about a read-only, virtual or full file system; a real write does
        with open(probe, "xb") as f:
            f.write(bytes(4096))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RddError(f"cannot write {what} '{path}': '{folder}' does not take files ({e.strerror}); free space or "
                       "choose another path") from None
    finally:
        probe.unlink(missing_ok=True)


def cache_dir() -> Path:
    """rdd's cache folder: $RDD_CACHE, else $XDG_CACHE_HOME/rdd, else ~/.cache/rdd."""
    if os.environ.get("RDD_CACHE"):
        return Path(os.environ["RDD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rdd"


def file_digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest(path: str | Path) -> str:
    """sha256 of a file, or of every file in a folder (a diffusers model) with its relative name."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}|{file_digest(f)}|".encode())
    return h.hexdigest()


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside `path`: the pid and a random part keep concurrent writers apart."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}{TEMP_SUFFIX}")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """`write(f)` into a temporary file beside `path`, flushed to disk, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path, names: tuple[str, ...]) -> None:
    """Temporary files that a kill left behind while writing the files or folders `names` of `folder` (only
    safe under the lock of the run that owns them)."""
    stale = [tmp for name in names for tmp in folder.glob(f"{TEMP_PREFIX}*-{name}{TEMP_SUFFIX}")]
    stale += [tmp for name in names if (folder / name).is_dir() for tmp in (folder / name).glob(TEMP_GLOB)]
    for tmp in stale:
        if tmp.is_file() or tmp.is_symlink():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json_record(path: str | Path, what: str) -> dict:
    """A JSON object rdd wrote (a run record, a result): read strictly, refused in one line naming the file."""
    path = Path(path)
    try:
        data = parse_json(path.read_text(), f"{what} '{path}'")
    except UnicodeDecodeError:
        raise RddError(f"{what} '{path}' is not a text file; delete it or restore it") from None
    if not isinstance(data, dict):
        raise RddError(f"{what} '{path}' does not hold a JSON object; delete it or restore it")
    return data


def cached_json(path: str | Path, compute: Callable[[], dict], stamp: dict | None = None) -> dict:
    """The result stored at `path`, or `compute()`'s, stored there first (evaluations a resume skips).
    A stored result made with another `stamp` (what produced it), or one that is not readable, is computed again."""
    path = Path(path)
    if path.is_file():
        try:
            stored = read_json_record(path, "cached result")
        except RddError as e:
            print(f"notice: {e}; computing it again", file=sys.stderr)
        else:
            if stored.get("stamp") == stamp:
                return stored
            print(f"notice: cached result '{path}' was made with other settings; computing it again", file=sys.stderr)
    result = compute()
    write_json_atomic(path, {**result, "stamp": stamp} if stamp is not None else result)
    return result
