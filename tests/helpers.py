"""What the test modules share: paths, the tiny config, running the command line and reading its errors.
Test modules import these from here (conftest.py holds only fixtures)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rdd.cli import main

ROOT = Path(__file__).resolve().parents[1]

# The one tiny config: a tiny U-Net on 16x16 Fashion-MNIST, a training step takes a few hundredths of
# a second. TINY_OVERRIDES for load_config, TINY for the command line.
TINY_OVERRIDES = ["model.name=tiny", "train.batch_size=16", "train.sample_steps=2", "train.num_grid=16",
                  "train.sample_every=0", "train.log_every=1", "train.warmup=0", "train.ema_decay=0.9"]
TINY = [arg for override in TINY_OVERRIDES for arg in ("--set", override)]
# TINY for the distillation commands, which refuse what they do not read: a student copies its teacher's
# network (model.name) and draws its grids at its own step count (train.sample_steps).
TINY_STAGE = [arg for override in TINY_OVERRIDES if not override.startswith(("model.name", "train.sample_steps"))
              for arg in ("--set", override)]


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


def run_cli(capsys, *argv) -> tuple[int, str]:
    """`rdd ARGV` in this process: its exit code and its stderr."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def error_line(code: int, err: str, *needles: str) -> str:
    """The command failed with one `rdd:` line that names every needle, and no traceback (a progress bar may precede it)."""
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("rdd:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_one_line(code: int, err: str, *needles: str) -> None:
    """As error_line, and stderr holds nothing else."""
    assert len(err.splitlines()) == 1, err
    error_line(code, err, *needles)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fake_cifar10(root: Path, train: int, test: int) -> Path:
    """A CIFAR-10 folder in torchvision's layout (cifar-10-batches-py: five training batches, test_batch,
    batches.meta) whose images are real Fashion-MNIST items padded to 32x32 and tinted per class into RGB."""
    import pickle

    from rdd.data import FASHION_MNIST_DEBIAN, read_idx

    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    tint = np.linspace(0.4, 1.0, 30).reshape(10, 3)  # each class its own colour
    for name, offset, n in [(f"data_batch_{i}", (i - 1) * (train // 5), train // 5) for i in range(1, 6)] + [("test_batch", 0, test)]:
        prefix = "t10k" if name == "test_batch" else "train"
        gray = read_idx(FASHION_MNIST_DEBIAN / f"{prefix}-images-idx3-ubyte.gz")[offset:offset + n]
        labels = read_idx(FASHION_MNIST_DEBIAN / f"{prefix}-labels-idx1-ubyte.gz")[offset:offset + n].astype(int)
        padded = np.pad(gray, ((0, 0), (2, 2), (2, 2))).astype(np.float64)
        rgb = (padded[:, None] * tint[labels][:, :, None, None]).round().astype(np.uint8)
        batch = {"batch_label": name, "labels": labels.tolist(), "data": rgb.reshape(n, -1),
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    return Path(root)
