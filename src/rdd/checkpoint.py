"""Checkpoint I/O: atomic writes and safe loads.

A checkpoint is a dict of tensors, numbers, strings and lists, written to a temporary file in
the same folder, flushed to disk and renamed over the target, so a kill mid-save leaves the
previous checkpoint whole. Loading uses `weights_only=True`: a pickle that carries code is refused.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from rdd.errors import RddError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise RddError(f"checkpoint '{path}' not found; check the path or train one with `rdd train`")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise RddError(f"checkpoint '{path}' carries code objects in its pickle; refusing to load an unsafe checkpoint") from None
        raise RddError(f"checkpoint '{path}' is corrupt or truncated ({type(e).__name__}); use another copy") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise RddError(f"checkpoint '{path}' is corrupt or truncated ({type(e).__name__}); use another copy") from None
    if not isinstance(state, dict):
        raise RddError(f"checkpoint '{path}' does not hold an rdd checkpoint (expected a dict, got {type(state).__name__})")
    return state


def require_keys(state: dict, keys: list[str], path: str | Path, kind: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise RddError(f"checkpoint '{path}' is not a {kind} checkpoint (missing {', '.join(missing)})")


def load_module_state(module: torch.nn.Module, weights: dict, path: str | Path, what: str) -> None:
    """load_state_dict with a one-line error when the checkpoint was made for another network."""
    try:
        result = module.load_state_dict(weights, strict=False)
        bad = list(result.missing_keys) + list(result.unexpected_keys)
    except RuntimeError as e:
        bad = [line.strip() for line in str(e).splitlines()[1:2]] or ["shape mismatch"]
    if bad:
        raise RddError(f"checkpoint '{path}' does not match the {what} network ({len(bad)} mismatched tensors, e.g. '{bad[0]}'); "
                       "use the config it was trained with")
