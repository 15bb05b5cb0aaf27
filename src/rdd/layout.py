"""Where a run puts its files: one place for the names that stages, chains, benchmarks and sweeps share."""
from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.pt"  # the EMA weights, config and sampling steps: what `rdd sample` reads
TRAIN_STATE = "train_state.pt"  # everything needed to resume
CLASSIFIER_FILE = "classifier.pt"  # what `rdd train-classifier` writes
EVALNET_FILE = "evalnet.pt"  # what `rdd train-evalnet` writes; older runs named it classifier.pt


def stage_dir(chain_dir: str | Path, teacher_steps: int) -> Path:
    """The folder of the stage teacher_steps -> teacher_steps / 2 of a chain."""
    return Path(chain_dir) / f"stage-{teacher_steps}to{teacher_steps // 2}"


def stage_model(chain_dir: str | Path, teacher_steps: int) -> Path:
    return stage_dir(chain_dir, teacher_steps) / MODEL_FILE
