"""Where a run puts its files: one place for the names that stages, chains, benchmarks and sweeps share."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.pt"  # the EMA weights, config and sampling steps: what `rdd sample` reads
TRAIN_STATE = "train_state.pt"  # everything needed to resume
CLASSIFIER_FILE = "classifier.pt"  # what `rdd train-classifier` writes
EVALNET_FILE = "evalnet.pt"  # what `rdd train-evalnet` writes; older runs named it classifier.pt
ASSETS = Path(__file__).resolve().parents[2] / "assets" / "fmnist"  # the shipped Fashion-MNIST models (16x16, grey)


@dataclass(frozen=True)
class RunFiles:
    """The files one kind of run of the training loop owns in its folder. Each kind has its own names,
    so a classifier and a diffusion model trained into one folder never touch each other's files."""

    final: str  # the finished product
    state: str  # everything a resume needs
    manifest: str  # what defines the run (rdd.rundir)
    metrics: str
    lock: str
    tensorboard: str
    extras: tuple[str, ...] = ()  # pictures and snapshots

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every file and folder the run writes (the lock aside): what --overwrite deletes."""
        return (self.state, self.manifest, self.final, self.metrics, self.tensorboard, *self.extras)


def _classifier_files(kind: str, final: str) -> RunFiles:
    return RunFiles(final=final, state=f"{kind}-state.pt", manifest=f"{kind}-run.json", metrics=f"{kind}-metrics.jsonl",
                    lock=f".{kind}.lock", tensorboard=f"{kind}-tensorboard")


DIFFUSION_FILES = RunFiles(final=MODEL_FILE, state=TRAIN_STATE, manifest="run.json", metrics="metrics.jsonl", lock=".lock",
                           tensorboard="tensorboard", extras=("samples.png", "grids", "snapshots"))
# Keyed by the run kind of rdd.rundir.run_kind: a base model and a distillation stage share their names.
RUN_FILES = {"train": DIFFUSION_FILES, "distill": DIFFUSION_FILES,
             "classifier": _classifier_files("classifier", CLASSIFIER_FILE),
             "evalnet": _classifier_files("evalnet", EVALNET_FILE)}


def stage_dir(chain_dir: str | Path, teacher_steps: int) -> Path:
    """The folder of the stage teacher_steps -> teacher_steps / 2 of a chain."""
    return Path(chain_dir) / f"stage-{teacher_steps}to{teacher_steps // 2}"


def stage_model(chain_dir: str | Path, teacher_steps: int) -> Path:
    return stage_dir(chain_dir, teacher_steps) / MODEL_FILE
