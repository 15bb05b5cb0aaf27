import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A tiny U-Net on 16x16 Fashion-MNIST: a training step takes a few hundredths of a second.
TINY = ["--set", "model.name=tiny", "--set", "train.batch_size=16", "--set", "train.sample_steps=2",
        "--set", "train.num_grid=16", "--set", "train.sample_every=0", "--set", "train.log_every=1",
        "--set", "train.warmup=0", "--set", "train.ema_decay=0.9"]


def rdd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rdd.cli", *args]


def run_rdd(*args: str, check: bool = True, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(rdd_command(*args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"rdd {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def tiny_args():
    return list(TINY)
