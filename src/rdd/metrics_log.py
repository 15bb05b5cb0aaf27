"""Metrics to a JSONL file (and TensorBoard when installed); image grids."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torchvision.utils import save_image

from rdd.files import write_atomic, write_text_atomic


class MetricsLog:
    def __init__(self, out_dir: str | Path, enabled: bool = True, name: str = "metrics.jsonl", tensorboard: str = "tensorboard"):
        self.enabled = enabled
        self.path = Path(out_dir) / name
        self.tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / tensorboard))
            except ImportError:
                pass

    def write(self, step: int, **values) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step`, so a resumed run does not log a step twice."""
        if not (self.enabled and self.path.is_file()):
            return
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        lines = [line for line in text.splitlines() if (at := _step(line)) is not None and at <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in lines))  # a kill mid-write keeps the old log whole

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _record(line: str) -> dict | None:
    """A log line as a record with an integer step, or None for a line that is not one (blank, cut
    short by a kill in the middle of a write, or written by something else)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _step(line: str) -> int | None:
    record = _record(line)
    return None if record is None else record["step"]


def read_metrics(path: str | Path) -> list[dict]:
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    return [record for line in text.splitlines() if (record := _record(line)) is not None]


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 1) -> None:
    """Save images in [-1, 1] as a PNG grid, atomically, each pixel drawn as `scale` x `scale` pixels."""
    images = images.float().clamp(-1, 1) * 0.5 + 0.5
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    write_atomic(path, lambda f: save_image(images, f, format="png", nrow=nrow, padding=scale, pad_value=1.0))
