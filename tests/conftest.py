"""Fixtures: the real Fashion-MNIST slice and the tiny models trained once per test run.
Shared helpers live in helpers.py; slow test modules mark themselves (pytestmark = pytest.mark.slow)."""
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from helpers import TINY, run_rdd, write_idx


@pytest.fixture(autouse=True, scope="session")
def rdd_cache(tmp_path_factory):
    """rdd's cache folder (reference statistics) in the session's temporary folder, for the commands
    the tests run in-process and the ones they start (which inherit the environment)."""
    os.environ["RDD_CACHE"] = str(tmp_path_factory.mktemp("rdd-cache"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, worker_id) -> Path:
    """The folder that all pytest-xdist workers of this run share (the run's base temporary folder)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def built_once(run_dir: Path, name: str, build) -> Path:
    """`build(folder)` once per test run: the first worker to ask builds it, the others wait and reuse it
    (the fixtures below are read-only inputs, so sharing them is safe and halves their cost)."""
    folder, done = run_dir / name, run_dir / f"{name}.built"
    with FileLock(str(run_dir / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture
def tiny_args():
    return list(TINY)


@pytest.fixture(scope="session")
def small_fmnist(run_dir):
    """The first 3000 train and 1000 test images of the real Fashion-MNIST, as IDX files."""
    from rdd.data import FASHION_MNIST_DEBIAN, read_idx

    if not (FASHION_MNIST_DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST_DEBIAN}; install it with `apt-get install dataset-fashion-mnist`")

    def build(root):
        for prefix, n in (("train", 3000), ("t10k", 1000)):
            for kind in ("images-idx3", "labels-idx1"):
                name = f"{prefix}-{kind}-ubyte"
                write_idx(root / name, read_idx(FASHION_MNIST_DEBIAN / f"{name}.gz")[:n])
    return built_once(run_dir, "fmnist", build)


@pytest.fixture(scope="session")
def evalnet(small_fmnist, run_dir):
    """The independent evaluation network, trained for one epoch on the small split."""
    def build(out):
        result = run_rdd("train-evalnet", "--set", f"data.root={small_fmnist}", "--set", "classifier.epochs=1", "--out", str(out))
        assert "evalnet test accuracy" in result.stdout
    return built_once(run_dir, "evalnet", build) / "evalnet.pt"


@pytest.fixture(scope="session")
def classifier(small_fmnist, run_dir):
    """The distillation classifier (small DenseNet-BC), one epoch on the small split."""
    def build(out):
        result = run_rdd("train-classifier", "--config", "configs/fmnist/classifier.yaml", "--set", f"data.root={small_fmnist}",
                         "--set", "classifier.epochs=1", "--out", str(out))
        assert "test accuracy" in result.stdout
    return built_once(run_dir, "classifier", build) / "classifier.pt"


@pytest.fixture(scope="session")
def teacher(small_fmnist, run_dir):
    """A tiny Fashion-MNIST teacher trained for 150 steps."""
    def build(out):
        run_rdd("train", *TINY, "--set", f"data.root={small_fmnist}", "--set", "train.iterations=150",
                "--set", "train.lr=1e-3", "--set", "train.ckpt_every=1000", "--out", str(out))
    return built_once(run_dir, "teacher", build) / "model.pt"
