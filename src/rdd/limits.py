"""What this machine can hold, said before the work: memory and disk estimated from shapes.

An estimate above the machine's whole memory (or the free space of a disk) is refused in one line;
one above half of the memory free now is a one-line notice, and the work goes on.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from rdd.errors import RddError

FLOAT_BYTES = 4


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} PB"


def _memory() -> tuple[int, int]:
    """(total, available now) bytes of this machine's memory."""
    page = os.sysconf("SC_PAGE_SIZE")
    return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(what: str, nbytes: int, fix: str) -> None:
    """Refuse `what` when its estimated `nbytes` exceed this machine's memory; note it when they are most of what is free."""
    total, free = _memory()
    if nbytes > total:
        raise RddError(f"{what} needs about {human(nbytes)} of memory, more than this machine's {human(total)}; {fix}")
    if nbytes > free // 2:
        print(f"notice: {what} needs about {human(nbytes)} of memory ({human(free)} free now)", file=sys.stderr)


def check_disk(path: str | Path, nbytes: int, what: str) -> None:
    """Refuse to write `what` (at most `nbytes`) to `path` when its disk has less room."""
    folder = Path(path).parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise RddError(f"{what} '{path}' may take up to {human(nbytes)}, but its disk has {human(free)} free; "
                       "free space, write fewer images, or choose another path")


def image_bytes(count: int, channels: int, resolution: int) -> int:
    """float32 images of one shape."""
    return count * channels * resolution * resolution * FLOAT_BYTES
