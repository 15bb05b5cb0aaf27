"""Run folders that cannot be silently damaged: a manifest, a lock, and no stale temporary files.

The manifest (`run.json`; `classifier-run.json` and so on for the other kinds of run, each with
its own file names, rdd.layout.RUN_FILES) records what defines a run: the config as the run used it
(rdd.config.used_config), the method's meta (step counts, the stage's temperature) and the sha256 of
every input file (teacher, classifier).
A run folder is entered only under its lock, and only as its manifest allows: a new run refuses
an existing one unless told to resume or to start over, and a resumed run refuses any changed
defining setting.
Output files of the other commands are checked for a writable folder before any work starts.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
from pathlib import Path

from rdd.config import ExperimentConfig, flatten, to_dict, used_config
from rdd.distributed import DistContext, broadcast_object
from rdd.errors import RddError
from rdd.files import check_path_text, check_writable, digest, remove_stale_temporaries
from rdd.layout import DIFFUSION_FILES, RUN_FILES, RunFiles
from rdd.strict_yaml import parse_json

# What a run writes inside its folders, by name: --overwrite deletes these and nothing else (a user's notes stay).
OWNED_IN = {"grids": re.compile(r"step\d{7}\.png"), "snapshots": re.compile(r"model-\d{7}\.pt")}
TENSORBOARD_EVENTS = re.compile(r"events\.out\.tfevents\..*")

# Settings a resumed run may change: how long it trains (longer only), how often it logs, saves and
# samples, and evaluation. A chain's target step count does not change any one stage either.
RESUMABLE = {"train.iterations", "distill.iterations", "train.log_every", "train.ckpt_every", "train.sample_every",
             "train.snapshot_at", "train.num_grid", "data.num_workers", "distill.target_steps",
             "classifier.ckpt_every", "classifier.checkpoint"}  # a classifier run trains a classifier, it reads none
INPUT_FILES = ("teacher", "classifier")  # meta entries that name files: compared by digest, not by path


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_inputs_outside(folder: str | Path, inputs: dict, flag: str = "--out") -> None:
    """A run never writes where its inputs live: refuse an output folder that holds (or is) one of them."""
    for name, path in inputs.items():
        if path and (_inside(Path(path), Path(folder)) or (Path(path).is_dir() and _inside(Path(folder), Path(path)))):
            raise RddError(f"{flag} '{folder}' holds this run's {name} '{path}', which the run could overwrite; "
                           f"choose another {flag}")


def _same_file(a: Path, b: Path) -> bool:
    """The same file by device and inode: a hard link or a symbolic link of it counts."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(path: str | Path, flag: str, inputs: dict | None = None, overwrite: bool | None = None) -> None:
    """Refuse, before any work, an output file that is one of the inputs (a link of one included), that exists
    when `overwrite` is False, or whose folder cannot be written."""
    check_path_text(str(path), flag)
    path = Path(path)
    for name, source in (inputs or {}).items():
        if source and Path(source).exists() and (_inside(Path(source), path) or _same_file(Path(source), path)):
            raise RddError(f"{flag} '{path}' is this command's {name}; write to another file")
    if path.is_dir():
        raise RddError(f"{flag} '{path}' is a folder; pass a file name")
    if overwrite is False and (path.exists() or path.is_symlink()):
        raise RddError(f"{flag} '{path}' already exists; pass --overwrite to replace it, or choose another file")
    check_writable(path, flag)


def run_kind(meta: dict) -> str:
    """Which command's run a folder holds: train (a base model), distill, or meta's own kind (classifier, evalnet)."""
    return meta.get("kind") or ("train" if meta.get("method") in (None, "base") else "distill")


def run_files(m: dict) -> RunFiles:
    """The file names of the run a manifest describes."""
    return RUN_FILES[m.get("kind") or run_kind(m["meta"])]


# What defines a run, by kind: a base model is trained from the model, data and train sections alone;
# a stage adds distill; a classifier is trained from the data and classifier sections.
DEFINING_SECTIONS = {"train": ("model", "data", "train"), "distill": ("model", "data", "train", "distill"),
                     "classifier": ("data", "classifier"), "evalnet": ("data", "classifier")}
KIND_COMMANDS = {"train": "train", "distill": "distill", "classifier": "train-classifier", "evalnet": "train-evalnet"}


def manifest(cfg: ExperimentConfig, meta: dict, iterations: int) -> dict:
    """What run.json records; `defining_settings` picks from it what a resume must keep."""
    files = {key: {"path": str(meta[key]), "sha256": digest(meta[key])} for key in INPUT_FILES if meta.get(key)}
    kind = run_kind(meta)
    return {"kind": kind, "config": used_config(to_dict(cfg), KIND_COMMANDS[kind]),
            "meta": {k: v for k, v in meta.items() if k not in files}, "files": files, "iterations": iterations}


def defining_settings(m: dict) -> dict:
    """The flattened settings that must not change on resume."""
    kind = m.get("kind") or run_kind(m["meta"])
    used = used_config(m["config"], KIND_COMMANDS[kind])  # a record from before used_config holds more
    settings = {k: v for k, v in flatten(used).items()
                if k.split(".")[0] in DEFINING_SECTIONS[kind] and k not in RESUMABLE}
    settings.update(flatten(m["meta"], "meta."))
    settings.update({f"{name}.sha256": f["sha256"] for name, f in m["files"].items()})
    return settings


def differences(old: dict, new: dict) -> list[str]:
    a, b = defining_settings(old), defining_settings(new)

    def shown(key: str, value) -> str:
        return repr(value[:12]) if key.endswith(".sha256") and value else repr(value)  # enough to tell files apart

    return [f"{k}: {shown(k, a.get(k))} -> {shown(k, b.get(k))}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def read_manifest(folder: Path, files: RunFiles = DIFFUSION_FILES) -> dict | None:
    path = folder / files.manifest
    if not path.is_file():
        return None
    try:
        recorded = parse_json(path.read_text(), "it")
    except (RddError, UnicodeDecodeError) as e:
        raise RddError(f"'{path}' is damaged ({e}); start the run over with --overwrite") from None
    kinds = {"config": dict, "meta": dict, "files": dict}
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(key), kind) for key, kind in kinds.items()):
        raise RddError(f"'{path}' is not an rdd run record (no config, meta and files); start the run over with --overwrite")
    if not all(isinstance(f, dict) and isinstance(f.get("sha256"), str) for f in recorded["files"].values()):
        raise RddError(f"'{path}' is not an rdd run record (its files lack their sha256); start the run over with --overwrite")
    return recorded


def is_finished(folder: Path, files: RunFiles = DIFFUSION_FILES) -> bool:
    """A run is done only once every output and record is written: its final file and its manifest's `finished`
    (set after the last file; a folder from before the manifest, or before that flag, counts its final file)."""
    if not (folder / files.final).is_file():
        return False
    recorded = read_manifest(folder, files)
    return recorded is None or recorded.get("finished", True) is True


def require_run_to_resume(folder: str | Path, files: RunFiles = DIFFUSION_FILES) -> None:
    """--resume continues a run: a folder that holds none (a typo in the path) is refused, not started afresh."""
    folder = Path(folder)
    if not ((folder / files.manifest).is_file() or (folder / files.state).is_file()):
        what = "does not exist" if not folder.exists() else "holds no run"
        raise RddError(f"--resume: '{folder}' {what}; check the path, or drop --resume to start a new run there")


def check_same_run(folder: Path, expected: dict, what: str) -> None:
    """Refuse to continue (or reuse) the run in `folder` when a defining setting changed."""
    recorded = read_manifest(folder, run_files(expected))
    if recorded is None:
        return  # a folder from before run.json: nothing to compare with
    diffs = differences(recorded, expected)
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise RddError(f"{what} '{folder}' was made with other settings ({shown}); "
                       "undo the change, use another --out, or start over with --overwrite")


class RunLock:
    """An exclusive flock on the folder's .lock, held while this process writes the run; the kernel
    releases it when the process dies, so a killed run never leaves the folder locked."""

    def __init__(self, folder: Path, name: str = DIFFUSION_FILES.lock):
        folder.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: a lock that links to a user's file would be truncated
            self.fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise RddError(f"'{folder / name}' is a symbolic link; rdd never writes through links: remove it "
                           "(nothing was changed)") from None
        if os.fstat(self.fd).st_nlink > 1:  # a hard link: writing the pid would change the other file too
            os.close(self.fd)
            raise RddError(f"'{folder / name}' is a hard link shared with another file; remove it (nothing was changed)")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 32).decode(errors="replace").strip()
            os.close(self.fd)
            raise RddError(f"run folder '{folder}' is in use by another rdd process{f' (pid {holder})' if holder else ''}; "
                           "wait for it to finish or pass another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _owned_files(folder: Path, files: RunFiles) -> list[Path]:
    """The files a run of this kind wrote in `folder`, found by their names."""
    owned = []
    for name in files.outputs:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            owned.append(path)
        elif path.is_dir() and not path.is_symlink():
            pattern = TENSORBOARD_EVENTS if name == files.tensorboard else OWNED_IN.get(name)
            owned += [p for p in path.iterdir() if pattern and pattern.fullmatch(p.name) and p.is_file()]
    return owned


def _refuse_links(folder: Path, files: RunFiles) -> None:
    """A run replaces its files whole, but appends to its log: an output that is a link (symbolic, or hard
    to a user's file) is refused, so nothing is written through it."""
    for name in files.outputs:
        path = folder / name
        if path.is_symlink():
            raise RddError(f"'{path}' is a symbolic link; rdd never writes through links: remove it (nothing was changed)")
        if path.is_file() and path.stat().st_nlink > 1:
            raise RddError(f"'{path}' is a hard link shared with another file; rdd would change both: "
                           "remove it or copy it (nothing was changed)")


def _start_over(folder: Path, files: RunFiles) -> None:
    """--overwrite: delete the previous run's files, and its folders only when nothing else is in them."""
    for path in _owned_files(folder, files):
        path.unlink()
    for name in files.outputs:
        if (folder / name).is_dir() and not (folder / name).is_symlink() and not any((folder / name).iterdir()):
            (folder / name).rmdir()


def _prepare(folder: Path, expected: dict, resume: bool, overwrite: bool) -> None:
    files = run_files(expected)
    remove_stale_temporaries(folder, files.outputs)  # this kind's only: another kind may be writing in the folder
    _refuse_links(folder, files)
    exists = (folder / files.manifest).is_file() or (folder / files.state).is_file()
    foreign = [name for name in files.outputs if (folder / name).exists()] if not (folder / files.manifest).is_file() else []
    if foreign:  # files a run would write, but no run record says an rdd run of this kind wrote them
        raise RddError(f"'{folder}' already holds {', '.join(foreign)}, which no rdd run recorded; "
                       "move them away or choose another --out (nothing was changed)")
    recorded = read_manifest(folder, files)
    kind = expected.get("kind", "train")
    if recorded is not None and recorded.get("kind", run_kind(recorded["meta"])) != kind:
        raise RddError(f"'{folder}' holds a {recorded.get('kind', run_kind(recorded['meta']))} run, not a {kind} run; "
                       "--overwrite and --resume only touch a run of the same command; choose another --out")
    if overwrite:
        _start_over(folder, files)
    elif exists and not resume:
        raise RddError(f"'{folder}' already holds a run; pass --resume to continue it, or --overwrite to start over")
    elif exists:
        check_same_run(folder, expected, "run folder")


def open_run(folder: Path, expected: dict | None, ctx: DistContext, *, resume: bool, overwrite: bool) -> RunLock | None:
    """Lock `folder` and check that this run may write there; every process gets the main one's verdict."""
    if resume and overwrite:
        raise RddError("--resume continues a run and --overwrite deletes it; pass one of them")
    lock, error = None, None
    if ctx.is_main:
        try:
            check_inputs_outside(folder, {name: f["path"] for name, f in expected["files"].items()})
            if folder.exists() and not folder.is_dir():
                raise RddError(f"--out '{folder}' is a file, not a run folder; pass another --out")
            lock = RunLock(folder, run_files(expected).lock)
            _prepare(folder, expected, resume, overwrite)
        except RddError as e:
            error = str(e)
        except OSError as e:  # a path under a file, a read-only disk: one line, and no process left waiting
            error = f"cannot write the run folder '{folder}': {e.strerror or e}; pass another --out"
        if error and lock is not None:
            lock.release()
    error = broadcast_object(error)
    if error:
        raise RddError(error)
    return lock
