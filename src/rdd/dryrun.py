"""What a protocol's stages cost, and the dry run that measures it before any GPU-days are spent.

`rdd benchmark CONFIG --dry-run` runs every stage at the configs' own width (the same networks, queue and
batch per GPU) for a couple of iterations; each stage's footprint is measured here: trainable and frozen
parameters, peak memory of every process (resident set on a CPU, max_memory_allocated on a GPU), the
checkpoint and folder sizes, and the seconds of the last iteration (the first one also pays for warm-up).
A dry run keeps only what a later stage reads: resume states, grids and the PD chain's intermediate
models are deleted once measured.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from rdd.checkpoint import load_checkpoint
from rdd.config import ExperimentConfig
from rdd.layout import MODEL_FILE, RUN_FILES
from rdd.metrics_log import read_metrics

# nothing a later stage reads: every kind of run's resume state, TensorBoard folder, grids and snapshots
DISPOSABLE = tuple(dict.fromkeys(name for files in RUN_FILES.values() for name in (files.state, files.tensorboard, *files.extras)))
CLEAR_PEAK = Path("/proc/self/clear_refs")


@dataclass
class DryRunConfig:
    """How `--dry-run` shortens the protocol; everything else runs as configured."""

    iterations: int = 2  # per training stage, every halving of every chain included
    batch_per_process: int | None = None  # default: each config's train.batch_size / paper_gpus (the paper's per-GPU batch)
    eval_samples: int = 10  # per table row, and the FID reference's first N training images
    max_sampling_steps: int = 16  # the teacher's longer rows (DDIM 128, 1,024) sample with this many steps


def reset_peak_memory() -> None:
    """Start a stage's peak afresh: Linux's peak resident set (VmHWM) and CUDA's peak allocation."""
    if CLEAR_PEAK.exists():
        try:
            CLEAR_PEAK.write_text("5")
        except OSError:  # not allowed here: the peak then spans the process's life so far
            pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """This process's peak since reset_peak_memory, in bytes: {'rss': ...} (+ 'cuda' on a GPU)."""
    status = Path("/proc/self/status")
    rss = 0
    if status.exists():
        line = next((x for x in status.read_text().splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
        rss = int(line.split()[1]) * 1024
    else:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = {"rss": rss}
    if torch.cuda.is_available():
        peak["cuda"] = torch.cuda.max_memory_allocated()
    return peak


def parameter_count(state: dict, skip: tuple[str, ...] = ()) -> int:
    """Floating-point entries of a state dict, BatchNorm's running statistics excluded (they are no parameters)."""
    return sum(v.numel() for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
               and not any(s in k for s in ("running_", *skip)))


def folder_bytes(folders: list[Path]) -> int:
    return sum(f.stat().st_size for folder in folders if folder.exists() for f in folder.rglob("*") if f.is_file())


def per_iteration(folders: list[Path], key: str = "seconds_per_iteration") -> float | None:
    """The mean over the stage's runs of `key` at their last logged iteration (the first also pays for warm-up)."""
    last = []
    for folder in folders:
        for log in folder.glob("*metrics.jsonl"):
            rows = [r for r in read_metrics(log) if key in r]
            if rows:
                last.append(rows[-1][key])
    return sum(last) / len(last) if last else None


def weights_footprint(folders: list[Path]) -> dict:
    """Parameters and checkpoint sizes of the last run folder of a stage: its model (or classifier) and resume state."""
    folder = folders[-1]
    found = {}
    files = next((f for f in RUN_FILES.values() if (folder / f.final).is_file()), None)
    if files is None:
        return found
    if (folder / files.manifest).is_file():  # rdd.rundir's manifest: the batch the stage ran at
        config = json.loads((folder / files.manifest).read_text())["config"]
        found["global_batch"] = config["classifier" if files.final != MODEL_FILE else "train"]["batch_size"]
    model = folder / files.final
    state = load_checkpoint(model)
    found.update(trainable=parameter_count(state["model"]), model_bytes=model.stat().st_size)
    if state.get("classifier"):
        found["frozen"] = found["trainable"] + parameter_count(load_checkpoint(state["classifier"])["model"])
    elif state.get("teacher_steps"):
        found["frozen"] = found["trainable"]  # the teacher: the student's own network
    if (folder / files.state).is_file():
        found["state_bytes"] = (folder / files.state).stat().st_size
        objective = load_checkpoint(folder / files.state).get("objective") or {}
        found["trainable"] = found.get("trainable", 0) + parameter_count(objective, ("queue",))
    return found


def stage_footprint(folders: list[Path], peaks: list[dict], seconds: float) -> dict:
    return {"seconds": round(seconds, 1), "seconds_per_iteration": per_iteration(folders),
            "cpu_seconds_per_iteration": per_iteration(folders, "cpu_seconds_per_iteration"),
            "cpu_seconds": [round(p["cpu_seconds"], 1) for p in peaks],
            "peak_rss": [p["rss"] for p in peaks], "peak_cuda": [p["cuda"] for p in peaks if "cuda" in p],
            "disk_bytes": folder_bytes(folders), **weights_footprint(folders)}


def discard(folders: list[Path], keep: Path | None = None) -> None:
    """Delete what no later stage reads: resume states, grids, logs for TensorBoard; and every model of
    the folders but `keep` (the PD chain's last student) when `keep` is given."""
    for folder in folders:
        for name in DISPOSABLE:
            path = folder / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        if keep is not None and folder / MODEL_FILE != keep:
            (folder / MODEL_FILE).unlink(missing_ok=True)


def dry_run_overrides(kind: str, cfg: ExperimentConfig, dry: DryRunConfig, paper_gpus: int, world: int) -> list[str]:
    """A stage's config settings in a dry run: `dry.iterations` steps, no grids, no warm-up, no loader processes,
    and the paper's batch per GPU on every process (unless dry.batch_per_process says otherwise)."""
    if kind == "classifier":
        batch = cfg.classifier.batch_size
        return ["classifier.epochs=1", f"classifier.train_limit={dry.iterations * batch}", "data.num_workers=0",
                f"data.holdout={batch if cfg.data.holdout else 0}"]
    per_process = dry.batch_per_process or max(1, cfg.train.batch_size // paper_gpus)
    common = [f"train.batch_size={per_process * world}", "train.log_every=1", "train.sample_every=0", "train.num_grid=0",
              "train.warmup=0", "data.num_workers=0", f"train.ckpt_every={dry.iterations}"]
    if kind == "teacher":
        return common + [f"train.iterations={dry.iterations}"]
    return common + [f"distill.iterations=[{dry.iterations}]"]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def footprint_line(name: str, stats: dict) -> str:
    def count(key):
        return f"{stats[key] / 1e6:.2f}M" if key in stats else "–"

    per_it, cpu_it = stats.get("seconds_per_iteration"), stats.get("cpu_seconds_per_iteration")
    peaks = " / ".join(human_bytes(b) for b in stats.get("peak_cuda") or stats["peak_rss"])
    batch = f"global batch {stats['global_batch']}, " if "global_batch" in stats else ""
    return (f"[dry-run] {name}: {batch}trainable {count('trainable')}, frozen {count('frozen')}, peak memory per process {peaks}, "
            f"model {human_bytes(stats['model_bytes']) if 'model_bytes' in stats else '–'}, "
            f"resume state {human_bytes(stats['state_bytes']) if 'state_bytes' in stats else '–'}, "
            f"disk {human_bytes(stats['disk_bytes'])}, {f'{per_it:.2f} s/iteration' if per_it else '–'}"
            f"{f' ({cpu_it:.2f} s of CPU)' if cpu_it else ''}, {stats['seconds']} s in all")
