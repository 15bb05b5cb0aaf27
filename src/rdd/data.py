"""Data sets, all yielding (image in [-1, 1] of shape (C, H, W), integer label).

Fashion-MNIST comes from the Debian package `dataset-fashion-mnist` (IDX files) with
torchvision's downloader as the fallback; CIFAR-10 through torchvision from a user's folder;
ImageNet 64x64 from an image folder whose sub-folders are the classes.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from rdd.config import DataConfig
from rdd.errors import RddError

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


REINSTALL = "apt-get install --reinstall dataset-fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims, then big-endian unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    damaged = f"Fashion-MNIST file '{path}' is truncated or corrupt; reinstall it with `{REINSTALL}` or replace the file"
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error):  # gzip.BadGzipFile is an OSError
        raise RddError(damaged) from None
    # Magic: two zero bytes, 0x08 (unsigned bytes), the number of dimensions.
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or len(raw) < 4 + 4 * raw[3]:
        raise RddError(damaged)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != 4 + 4 * ndim + int(np.prod(dims)):
        raise RddError(damaged)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_fashion_mnist(root: str | None) -> Path:
    # A data.root that is set is the only place looked at: never silently another copy.
    candidates = [Path(root)] if root else [FASHION_MNIST_DEBIAN, Path.home() / ".cache/rdd/fashion-mnist"]
    for folder in candidates:
        if (folder / "train-images-idx3-ubyte.gz").is_file() or (folder / "train-images-idx3-ubyte").is_file():
            return folder
        raw = folder / "FashionMNIST" / "raw"  # torchvision's layout
        if (raw / "train-images-idx3-ubyte.gz").is_file():
            return raw
    target = Path(root) if root else Path.home() / ".cache/rdd/fashion-mnist"
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
        return target / "FashionMNIST" / "raw"
    except Exception:
        where = f"in data.root '{root}'" if root else "(data.root is unset)"
        raise RddError(
            f"Fashion-MNIST not found {where}; install it with `apt-get install dataset-fashion-mnist` "
            "or put the IDX files in the folder given by data.root"
        ) from None


def _idx_file(folder: Path, stem: str) -> Path:
    gz = folder / f"{stem}.gz"
    return gz if gz.is_file() else folder / stem


def to_resolution(images: torch.Tensor, resolution: int, mode: str) -> torch.Tensor:
    """Bring (N, C, H, W) images in [-1, 1] to `resolution` by bilinear resize or by padding with -1."""
    size = images.shape[-1]
    if size == resolution:
        return images
    if mode == "pad":
        if resolution < size:
            raise RddError(f"cannot pad {size}x{size} images down to {resolution}; use data.resize=bilinear")
        before = (resolution - size) // 2
        after = resolution - size - before
        return F.pad(images, (before, after, before, after), value=-1.0)
    if mode == "bilinear":
        return F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    raise RddError(f"unknown data.resize '{mode}'; use bilinear or pad")


def fashion_mnist(cfg: DataConfig, split: str) -> TensorDataset:
    folder = _find_fashion_mnist(cfg.root)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise RddError(f"Fashion-MNIST in '{folder}' has {len(images)} {prefix} images but {len(labels)} labels; "
                       f"reinstall it with `{REINSTALL}` or replace the files")
    x = torch.from_numpy(images.copy()).float().div(127.5).sub(1.0).unsqueeze(1)
    x = to_resolution(x, cfg.resolution, cfg.resize)
    if cfg.channels == 3:
        x = x.repeat(1, 3, 1, 1)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


class _TorchvisionImages(Dataset):
    """Wraps a torchvision image data set: PIL -> tensor in [-1, 1] at the configured resolution."""

    def __init__(self, base, resolution: int):
        from torchvision import transforms

        self.base = base
        self.transform = transforms.Compose([
            transforms.Resize(resolution, antialias=True),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize(0.5, 0.5),
        ])

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return self.transform(image.convert("RGB")), label


def cifar10(cfg: DataConfig, split: str) -> Dataset:
    from torchvision.datasets import CIFAR10

    root = cfg.root or str(Path.home() / ".cache/rdd/cifar10")
    try:
        base = CIFAR10(root, train=split == "train", download=False)
    except RuntimeError:
        try:
            base = CIFAR10(root, train=split == "train", download=True)
        except Exception:
            raise RddError(f"CIFAR-10 not found in '{root}'; put cifar-10-batches-py there or set data.root") from None
    return _TorchvisionImages(base, cfg.resolution)


def imagenet64(cfg: DataConfig, split: str) -> Dataset:
    from torchvision.datasets import ImageFolder

    if not cfg.root:
        raise RddError("ImageNet 64x64 needs data.root: a folder with train/ and val/, one sub-folder per class")
    folder = Path(cfg.root) / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise RddError(f"ImageNet folder '{folder}' not found; set data.root to a folder with train/ and val/ class folders")
    return _TorchvisionImages(ImageFolder(str(folder)), cfg.resolution)


DATASETS = {"fashion_mnist": fashion_mnist, "cifar10": cifar10, "imagenet64": imagenet64}
CLASS_COUNTS = {"fashion_mnist": 10, "cifar10": 10, "imagenet64": 1000}


def class_count(cfg: DataConfig) -> int:
    """How many labels the data set has (a classifier's outputs, a conditional model's largest class count)."""
    if cfg.dataset not in CLASS_COUNTS:
        raise RddError(f"unknown data.dataset '{cfg.dataset}'; choose one of {', '.join(CLASS_COUNTS)}")
    return CLASS_COUNTS[cfg.dataset]


def load_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """`train`, `val` (the last data.holdout training images, never trained on) or `test`."""
    if cfg.dataset not in DATASETS:
        raise RddError(f"unknown data.dataset '{cfg.dataset}'; choose one of {', '.join(DATASETS)}")
    if cfg.root and not Path(cfg.root).is_dir():
        raise RddError(f"data.root '{cfg.root}' is not a folder; create it, fix the path, or unset data.root for the default location")
    if split == "test" or (split == "train" and not cfg.holdout):
        return DATASETS[cfg.dataset](cfg, split)
    if split != "val" and split != "train":
        raise RddError(f"unknown split '{split}'; use train, val or test")
    if not cfg.holdout:
        raise RddError("the 'val' split needs held-out training images: set data.holdout=N (e.g. 10000)")
    full = DATASETS[cfg.dataset](cfg, "train")
    if not 0 < cfg.holdout < len(full):
        raise RddError(f"data.holdout={cfg.holdout} must be between 1 and {len(full) - 1} (the training set has {len(full)} images)")
    cut = len(full) - cfg.holdout
    return Subset(full, range(cut) if split == "train" else range(cut, len(full)))


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2, drawing from `generator` so resuming reproduces it."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)


class ResumableSampler(torch.utils.data.Sampler):
    """Epoch-seeded shuffling, sharded over ranks like DistributedSampler, that can start mid-epoch."""

    def __init__(self, length: int, seed: int, rank: int = 0, world: int = 1):
        self.length, self.seed, self.rank, self.world = length, seed, rank, world
        self.per_rank = length // world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int):
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=g)[: self.per_rank * self.world]
        mine = order[self.rank:: self.world]
        return iter(mine[self.start:].tolist())

    def __len__(self):
        return self.per_rank - self.start
