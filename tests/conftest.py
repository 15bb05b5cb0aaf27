import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# The one tiny config: a tiny U-Net on 16x16 Fashion-MNIST, a training step takes a few hundredths of
# a second. TINY_OVERRIDES for load_config, TINY for the command line.
TINY_OVERRIDES = ["model.name=tiny", "train.batch_size=16", "train.sample_steps=2", "train.num_grid=16",
                  "train.sample_every=0", "train.log_every=1", "train.warmup=0", "train.ema_decay=0.9"]
TINY = [arg for override in TINY_OVERRIDES for arg in ("--set", override)]

# Tests that train real (tiny) models for seconds to minutes; `make test-fast` leaves them out.
SLOW_FIXTURES = {"teacher", "classifier", "evalnet", "tiny_model", "trained"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def rdd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rdd.cli", *args]


def run_rdd(*args: str, check: bool = True, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(rdd_command(*args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"rdd {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def run_and_kill(args: list[str], out: Path, after_lines: int) -> None:
    """Start `rdd ARGS --out OUT` and SIGKILL it once its metrics log has `after_lines` lines."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(rdd_command(*args, "--out", str(out)), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= after_lines:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "the run finished before it was killed"


@pytest.fixture
def tiny_args():
    return list(TINY)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="session")
def small_fmnist(tmp_path_factory):
    """The first 3000 train and 1000 test images of the real Fashion-MNIST, as IDX files."""
    from rdd.data import FASHION_MNIST_DEBIAN, read_idx

    root = tmp_path_factory.mktemp("fmnist")
    for prefix, n in (("train", 3000), ("t10k", 1000)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte"
            write_idx(root / name, read_idx(FASHION_MNIST_DEBIAN / f"{name}.gz")[:n])
    return root


@pytest.fixture(scope="session")
def evalnet(small_fmnist, tmp_path_factory):
    """The independent evaluation network, trained for one epoch on the small split."""
    out = tmp_path_factory.mktemp("evalnet")
    result = run_rdd("train-evalnet", "--set", f"data.root={small_fmnist}", "--set", "classifier.epochs=1", "--out", str(out))
    assert "evalnet test accuracy" in result.stdout
    return out / "classifier.pt"


@pytest.fixture(scope="session")
def classifier(small_fmnist, tmp_path_factory):
    """The distillation classifier (small DenseNet-BC), one epoch on the small split."""
    out = tmp_path_factory.mktemp("classifier")
    result = run_rdd("train-classifier", "--config", "configs/fmnist/classifier.yaml", "--set", f"data.root={small_fmnist}",
                     "--set", "classifier.epochs=1", "--out", str(out))
    assert "test accuracy" in result.stdout
    return out / "classifier.pt"


@pytest.fixture(scope="session")
def teacher(small_fmnist, tmp_path_factory):
    """A tiny Fashion-MNIST teacher trained for 150 steps."""
    out = tmp_path_factory.mktemp("teacher")
    run_rdd("train", *TINY, "--set", f"data.root={small_fmnist}", "--set", "train.iterations=150",
            "--set", "train.lr=1e-3", "--set", "train.ckpt_every=1000", "--out", str(out))
    return out / "model.pt"
