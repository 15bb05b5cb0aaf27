"""Files a resume trusts: written atomically, and recognised by their sha256.

An atomic write goes to a temporary file `.NAME.PID.tmp` beside the target and is renamed over it,
so a reader, or the next run, never sees half a file; a kill leaves only the temporary file, which
rdd.rundir removes on the next start.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable


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


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
