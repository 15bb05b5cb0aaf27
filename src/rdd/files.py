"""Files a resume trusts: written atomically, and recognised by their sha256.

An atomic write (`write_atomic`) goes to a temporary file beside the target, is flushed to disk
and renamed over it, so a reader, or the next run, never sees half a file; a kill leaves only the
temporary file, named `TEMP_PREFIX` + pid + a random part + the target's name + `TEMP_SUFFIX`
(`TEMP_GLOB` matches them), which no user would choose and rdd.rundir removes on the next start.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_PREFIX, TEMP_SUFFIX = ".rdd-tmp-", ".tmp"
TEMP_GLOB = f"{TEMP_PREFIX}*{TEMP_SUFFIX}"  # every temporary file of an atomic write, and nothing else


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


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def cached_json(path: str | Path, compute: Callable[[], dict]) -> dict:
    """The result stored at `path`, or `compute()`'s, stored there first (evaluations a resume skips)."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    write_json_atomic(path, result)
    return result
