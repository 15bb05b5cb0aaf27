"""Checkpoint I/O: atomic writes and safe loads.

A checkpoint is a dict of tensors, numbers, strings and lists, written to a temporary file in
the same folder, flushed to disk and renamed over the target, so a kill mid-save leaves the
previous checkpoint whole. Loading uses `weights_only=True`: a pickle that carries code is refused.
Each checkpoint also stores a sha256 digest of its contents (tensors, keys, values), checked on load,
so a damaged copy (a flipped bit on disk, a bad transfer) is refused instead of loading wrong weights.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from rdd.errors import RddError
from rdd.files import write_atomic


DIGEST_KEY = "content_sha256"


def content_digest(state) -> str:
    """sha256 over every tensor's place, dtype, shape and bytes, walking mappings in sorted key order;
    keys, numbers and strings are included, so a damaged name or step count is caught too."""
    h = hashlib.sha256()

    def walk(value, where: str) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{where}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            h.update(f"{where}|dict|".encode())
            for key in sorted(value, key=str):
                walk(value[key], f"{where}/{key!r}")
        elif isinstance(value, (set, frozenset)):  # no fixed order of its own
            walk(sorted(value, key=repr), where)
        elif isinstance(value, (list, tuple)):
            h.update(f"{where}|list|".encode())
            for i, item in enumerate(value):
                walk(item, f"{where}/{i}")
        else:
            h.update(f"{where}={value!r}|".encode())

    walk(state, "")
    return h.hexdigest()


def first_nonfinite(weights: dict) -> str | None:
    """The name of the first floating-point tensor that holds a nan or an inf, if any."""
    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def save_checkpoint(state: dict, path: str | Path) -> None:
    state = {**state, DIGEST_KEY: content_digest(state)}
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "not found"
        raise RddError(f"checkpoint '{path}' {what}; check the path or train one with `rdd train`")
    if path.stat().st_size == 0:
        raise RddError(f"checkpoint '{path}' is empty (0 bytes; an interrupted copy?); use another copy")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # Code names a global outside torch; random bytes fail as "Unsupported operand", a flipped bit
        # inside one of torch's own names as an unknown GLOBAL torch.*.
        if "GLOBAL" in str(e) and "GLOBAL torch." not in str(e):
            raise RddError(f"checkpoint '{path}' carries code objects in its pickle; refusing to load an unsafe checkpoint") from None
        raise RddError(f"checkpoint '{path}' is corrupt, truncated, or a pickle that torch's safe loader refuses "
                       f"({type(e).__name__}); use another copy") from None
    except Exception as e:  # a damaged pickle or zip fails in many ways (KeyError, IndexError, RuntimeError, ...)
        raise RddError(f"checkpoint '{path}' is corrupt or truncated ({type(e).__name__}); use another copy") from None
    if not isinstance(state, dict):
        raise RddError(f"checkpoint '{path}' does not hold an rdd checkpoint (expected a dict, got {type(state).__name__})")
    stored = state.pop(DIGEST_KEY, None)  # older files have none (the shipped ones are checked by SHA256SUMS)
    if stored is not None and stored != content_digest(state):
        raise RddError(f"checkpoint '{path}' is damaged: its contents do not match the stored digest; use another copy")
    return state


def require_keys(state: dict, keys: list[str], path: str | Path, kind: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise RddError(f"checkpoint '{path}' is not a {kind} checkpoint (missing {', '.join(missing)})")


def load_module_state(module: torch.nn.Module, weights: dict, path: str | Path, what: str) -> None:
    """load_state_dict with a one-line error when the checkpoint was made for another network."""
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise RddError(f"checkpoint '{path}': the {what} weights are not a mapping of names to tensors; use another copy")
    floating = {k: v for k, v in weights.items() if v.is_floating_point() != module.state_dict().get(k, v).is_floating_point()}
    if floating:
        raise RddError(f"checkpoint '{path}': {what} tensor '{next(iter(floating))}' has dtype "
                       f"{floating[next(iter(floating))].dtype}, of another kind than the network's; use another copy")
    try:
        result = module.load_state_dict(weights, strict=False)
        bad = list(result.missing_keys) + list(result.unexpected_keys)
    except RuntimeError as e:
        bad = [line.strip() for line in str(e).splitlines()[1:2]] or ["shape mismatch"]
    if bad:
        raise RddError(f"checkpoint '{path}' does not match the {what} network ({len(bad)} mismatched tensors, e.g. '{bad[0]}'); "
                       "use the config it was trained with")
