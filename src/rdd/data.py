"""Data sets, all yielding (image in [-1, 1] of shape (C, H, W), integer label).

Fashion-MNIST comes from the Debian package `dataset-fashion-mnist` (IDX files) with
torchvision's downloader as the fallback; CIFAR-10 through torchvision from a user's folder;
ImageNet 64x64 from an image folder whose sub-folders are the classes; `folder`, any folder of
images, decoded once into a cached uint8 copy (docs/data.md).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from rdd.checkpoint import load_checkpoint, save_checkpoint
from rdd.config import DataConfig
from rdd.errors import RddError
from rdd.files import cache_dir

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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
UNREADABLE_LIMIT = 0.01  # a folder with more unreadable images than this share is refused, not skipped
GREY_SPREAD = 2  # an image whose channels differ by at most this (JPEG noise) is grey
FOLDER_CACHE_VERSION = 1  # part of the cache key: bump when decoding changes


def folder_images(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """The images under `root` (sorted; hidden files and folders skipped), their labels and the class names.
    As in torchvision's ImageFolder, the sub-folders of `root` are the classes when every image lies in one;
    an image at the top level makes the folder unlabelled (every label 0, no class names)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise RddError(f"data.root '{root}' holds no PNG, JPEG or WebP images (its sub-folders searched too); "
                       "point data.root at a folder of images")
    tops = [p.relative_to(root).parts for p in files]
    if any(len(parts) == 1 for parts in tops):
        return files, [0] * len(files), []
    classes = sorted({parts[0] for parts in tops})
    index = {name: i for i, name in enumerate(classes)}
    return files, [index[parts[0]] for parts in tops], classes


def _decode(path: Path, resolution: int) -> np.ndarray:
    """One image as (resolution, resolution, 3) uint8 RGB: turned upright, resized on its shorter side and
    center-cropped; 16-bit grey scaled to 8 bits; an alpha channel is dropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced scale when it is larger
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
        image = ImageOps.fit(image.convert("RGB"), (resolution, resolution), Image.Resampling.BILINEAR)
        return np.asarray(image)


def _folder_cache_path(cfg: DataConfig, root: Path, files: list[Path]) -> Path:
    """The cached copy's file, keyed by the folder's file list, sizes and modification times and the settings."""
    h = hashlib.sha256(f"{FOLDER_CACHE_VERSION}|{root.resolve()}|{cfg.resolution}|{cfg.channels}".encode())
    for path in files:
        stat = path.stat()
        h.update(f"|{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return cache_dir() / "folders" / f"{root.name}-{h.hexdigest()[:16]}.pt"


def folder_stamp(cfg: DataConfig) -> str:
    """What identifies a folder data set's images: its cached copy's key (file list, sizes, times, settings)."""
    root = _folder_root(cfg)
    return _folder_cache_path(cfg, root, folder_images(root)[0]).stem


def _decode_folder(cfg: DataConfig, root: Path, files: list[Path], labels: list[int]) -> dict:
    """Every readable image, in the data's channels, in a fixed shuffled order (data.holdout's last images are
    then a random draw across classes); refuses a folder with too many unreadable images or colour read as grey."""
    from PIL import Image
    from tqdm.auto import tqdm

    images, kept, failed = [], [], []
    quiet = len(files) < 1000 or not _main_process()
    for i, path in enumerate(tqdm(files, desc=f"decoding {root}", disable=quiet, leave=False)):
        try:
            images.append(_decode(path, cfg.resolution))
            kept.append(i)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # damaged, unknown or huge files
            failed.append(f"'{path}': {type(e).__name__}: {' '.join(str(e).split())[:120]}")
    if len(failed) > UNREADABLE_LIMIT * len(files):
        raise RddError(f"{len(failed)} of {len(files)} images in data.root '{root}' cannot be read (e.g. {failed[0]}); "
                       f"fix or remove them (up to {UNREADABLE_LIMIT:.0%} are skipped)")
    rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    spread = (rgb.amax(1).int() - rgb.amin(1).int()).flatten(1).amax(1)
    colour = int((spread > GREY_SPREAD).sum())
    if cfg.channels == 1 and colour:
        raise RddError(f"{colour} of {len(rgb)} images in data.root '{root}' are in colour but data.channels is 1; "
                       "set data.channels=3, or convert the images to grey yourself if grey is meant")
    if cfg.channels == 1:  # every image is grey: its channels agree up to JPEG noise
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        rgb = rgb.float().mul(luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    order = torch.randperm(len(rgb), generator=torch.Generator().manual_seed(0))
    return {"images": rgb[order].contiguous(), "labels": torch.tensor(labels)[kept][order], "skipped": failed,
            "grey_as_rgb": (len(rgb) - colour) if cfg.channels == 3 else 0}


class DecodedImages(Dataset):
    """(N, C, H, W) uint8 images and their labels as (image in [-1, 1], label), converted one at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float().div(127.5).sub(1.0), self.labels[i]


def _folder_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise RddError("data.dataset=folder needs data.root: a folder of PNG, JPEG or WebP images (docs/data.md)")
    if not Path(cfg.root).is_dir():
        raise RddError(f"data.root '{cfg.root}' is not a folder; point it at a folder of PNG, JPEG or WebP images")
    return Path(cfg.root)


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun every process reads the folder; one speaks


def image_folder(cfg: DataConfig, split: str) -> Dataset:
    """`data.root`'s images at data.resolution and data.channels, from the cached decoded copy (made on first use).
    A folder has one pool of images: data.holdout sets aside the val split, which serves as its test split too."""
    if split == "test":
        if not cfg.holdout:
            raise RddError(f"data.root '{cfg.root}' is one pool of images with no test split; set data.holdout=N to "
                           "hold out N of them for evaluation")
        return load_dataset(cfg, "val")
    root = _folder_root(cfg)
    files, labels, classes = folder_images(root)
    cache = _folder_cache_path(cfg, root, files)
    if cache.is_file():
        state = load_checkpoint(cache)
    else:
        state = {**_decode_folder(cfg, root, files, labels), "classes": classes}
        save_checkpoint(state, cache)
        if _main_process():
            print(folder_summary(root, state, cache))
    return DecodedImages(state["images"], state["labels"])


def folder_summary(root: Path, state: dict, cache: Path) -> str:
    """What reading a folder did, in one line."""
    n, skipped, classes = len(state["images"]), state["skipped"], state["classes"]
    parts = [f"folder '{root}': {n} images", f"{len(classes)} classes" if classes else "unlabelled",
             "x".join(map(str, state["images"].shape[1:])), f"decoded once into {cache}"]
    if state["grey_as_rgb"]:
        parts.append(f"{state['grey_as_rgb']} grey images copied to 3 channels")
    if skipped:
        parts.append(f"{len(skipped)} unreadable skipped (e.g. {skipped[0]})")
    return "; ".join(parts)


DATASETS = {"fashion_mnist": fashion_mnist, "cifar10": cifar10, "imagenet64": imagenet64, "folder": image_folder}
CLASS_COUNTS = {"fashion_mnist": 10, "cifar10": 10, "imagenet64": 1000}
NATIVE_CHANNELS = {"fashion_mnist": 1, "cifar10": 3, "imagenet64": 3}  # a folder is read in data.channels


def class_count(cfg: DataConfig) -> int:
    """How many labels the data set has (a classifier's outputs, a conditional model's largest class count);
    an unlabelled folder has one."""
    if cfg.dataset == "folder":
        return len(folder_images(_folder_root(cfg))[2]) or 1
    if cfg.dataset not in CLASS_COUNTS:
        raise RddError(f"unknown data.dataset '{cfg.dataset}'; choose one of {', '.join(DATASETS)}")
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
    check_reading(cfg)
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


def check_reading(cfg: DataConfig) -> None:
    """Settings a data set cannot honour are refused, not ignored: colour data read as grey, padding where
    images are resized and center-cropped (ImageNet's and a folder's)."""
    if NATIVE_CHANNELS.get(cfg.dataset) == 3 and cfg.channels != 3:
        raise RddError(f"{cfg.dataset} has colour images but data.channels is {cfg.channels}; set data.channels=3")
    if cfg.resize != "bilinear" and cfg.dataset in ("imagenet64", "folder"):
        raise RddError(f"data.resize={cfg.resize} pads small images to data.resolution; {cfg.dataset}'s images are resized "
                       "and center-cropped: leave data.resize at bilinear")


def load_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """`train`, `val` (the last data.holdout training images, never trained on) or `test`."""
    if cfg.dataset not in DATASETS:
        raise RddError(f"unknown data.dataset '{cfg.dataset}'; choose one of {', '.join(DATASETS)}")
    check_reading(cfg)
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
