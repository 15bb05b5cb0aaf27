"""Data sets, all yielding (image in [-1, 1] of shape (C, H, W), integer label).

Fashion-MNIST comes from the Debian package `dataset-fashion-mnist` (IDX files) with
torchvision's downloader as the fallback; CIFAR-10 through torchvision from a user's folder;
ImageNet 64x64 from an image folder whose sub-folders are the classes.
"""
from __future__ import annotations

import gzip
import pickle
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


CIFAR_FOLDER = "cifar-10-batches-py"  # torchvision's layout: data_batch_1..5 and test_batch, pickled dicts
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_SIZE = 32


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR-10's batches hold only dicts, lists and numpy arrays: anything else in the pickle is refused, not run."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")


def read_cifar10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 3, 32, 32), int64 labels) of a cifar-10-batches-py folder, checked: a missing or
    damaged batch, rows that are not 3x32x32 images, or labels outside 0..9 are refused in one line."""
    images, labels = [], []
    for name in CIFAR_BATCHES["test" if split == "test" else "train"]:
        path = folder / name
        if not path.is_file():
            raise RddError(f"CIFAR-10 batch '{path}' is missing; {folder} must hold data_batch_1..5 and test_batch "
                           "(torchvision's cifar-10-batches-py layout)")
        try:
            with open(path, "rb") as f:
                batch = _ArrayUnpickler(f, encoding="latin1").load()
            data, batch_labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError) as e:
            raise RddError(f"CIFAR-10 batch '{path}' is not a CIFAR-10 python batch ({e}); replace it") from None
        row = 3 * CIFAR_SIZE * CIFAR_SIZE
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row or len(data) != len(batch_labels):
            raise RddError(f"CIFAR-10 batch '{path}' holds {data.dtype} rows of {data.shape[1:]} values for {len(batch_labels)} "
                           f"labels; CIFAR-10 rows are 3x32x32 = {row} bytes, one label each")
        images.append(data.reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE))
        labels.append(batch_labels)
    labels = np.concatenate(labels)
    if labels.min() < 0 or labels.max() >= CLASS_COUNTS["cifar10"]:
        raise RddError(f"CIFAR-10 in '{folder}' has labels {labels.min()}..{labels.max()}; CIFAR-10 has "
                       f"{CLASS_COUNTS['cifar10']} classes (0..9)")
    return np.concatenate(images), labels


class _ArrayImages(Dataset):
    """uint8 (N, C, H, W) images kept as bytes, each returned in [-1, 1] at the configured resolution."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, cfg: DataConfig):
        self.images, self.labels, self.resolution, self.resize = images, labels, cfg.resolution, cfg.resize

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).float().div(127.5).sub(1.0)
        return to_resolution(x[None], self.resolution, self.resize)[0], int(self.labels[i])


def cifar10_folder(cfg: DataConfig) -> Path:
    root = Path(cfg.root or Path.home() / ".cache/rdd/cifar10")
    if not (root / CIFAR_FOLDER).is_dir():
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=True, download=True)  # on a machine with internet
        except Exception:
            raise RddError(f"CIFAR-10 not found in '{root}': no {CIFAR_FOLDER} folder (torchvision's layout); "
                           "put it there or set data.root") from None
    return root / CIFAR_FOLDER


def cifar10(cfg: DataConfig, split: str) -> Dataset:
    return _ArrayImages(*read_cifar10(cifar10_folder(cfg), split), cfg)


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


def _image_folder_shape(cfg: DataConfig) -> tuple[int, int, Path]:
    """(stored size of the first image, number of classes, folder) of an ImageNet-style train/ and val/ pair."""
    from PIL import Image, UnidentifiedImageError

    if not cfg.root:
        raise RddError("ImageNet 64x64 needs data.root: a folder with train/ and val/, one sub-folder per class")
    found = {}
    for split in ("train", "val"):
        folder = Path(cfg.root) / split
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        if not classes:
            raise RddError(f"'{folder}' has no class folders; data.root must hold train/ and val/, one sub-folder of images per class")
        found[split] = classes
    if found["train"] != found["val"]:
        raise RddError(f"'{cfg.root}': train/ has {len(found['train'])} class folders and val/ {len(found['val'])}, "
                       "not the same names; both need one folder per class")
    train = Path(cfg.root) / "train"
    first = next((f for d in found["train"] for f in sorted((train / d).iterdir()) if f.is_file()), None)
    if first is None:
        raise RddError(f"the class folders of '{train}' hold no images")
    try:
        with Image.open(first) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        raise RddError(f"'{first}' is not an image; the class folders of '{train}' must hold images only") from None
    if width != height:
        raise RddError(f"'{first}' is {width}x{height}; ImageNet 64x64 images are square")
    return width, len(found["train"]), train


def check_dataset(cfg: DataConfig) -> None:
    """The data a long protocol reads, checked before its first stage: the folder layout, the stored image
    size (not after resizing) and the number of classes, each refused in one line."""
    expected = class_count(cfg)
    if cfg.dataset == "cifar10":
        where = cifar10_folder(cfg)
        classes = len(np.unique(read_cifar10(where, "train")[1]))
        read_cifar10(where, "test")
        size = CIFAR_SIZE
    elif cfg.dataset == "imagenet64":
        size, classes, where = _image_folder_shape(cfg)
    else:
        return  # Fashion-MNIST: read_idx checks its files as it reads them
    if size != cfg.resolution:
        raise RddError(f"the images in '{where}' are {size}x{size} but data.resolution is {cfg.resolution}; "
                       f"store them at {cfg.resolution}x{cfg.resolution} or point data.root at data of that size")
    if classes != expected:
        raise RddError(f"'{where}' has {classes} classes but {cfg.dataset} has {expected} (the classifier's outputs"
                       f"{', model.num_classes' if cfg.dataset == 'imagenet64' else ''}); point data.root at the whole data set")


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
