"""Fixtures: the real Fashion-MNIST slice and the tiny models trained once per session.
Shared helpers live in helpers.py; slow test modules mark themselves (pytestmark = pytest.mark.slow)."""
import os

import pytest

from helpers import TINY, run_rdd, write_idx


@pytest.fixture(autouse=True, scope="session")
def rdd_cache(tmp_path_factory):
    """rdd's cache folder (reference statistics) in the session's temporary folder, for the commands
    the tests run in-process and the ones they start (which inherit the environment)."""
    os.environ["RDD_CACHE"] = str(tmp_path_factory.mktemp("rdd-cache"))


@pytest.fixture
def tiny_args():
    return list(TINY)


@pytest.fixture(scope="session")
def small_fmnist(tmp_path_factory):
    """The first 3000 train and 1000 test images of the real Fashion-MNIST, as IDX files."""
    from rdd.data import FASHION_MNIST_DEBIAN, read_idx

    if not (FASHION_MNIST_DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST_DEBIAN}; install it with `apt-get install dataset-fashion-mnist`")
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
    return out / "evalnet.pt"


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
