"""The frozen feature classifier of CFD/RCFD/RDD (paper §3.2, eq. 3) and the independent evaluation network.

`FeatureClassifier` is torchvision's DenseNet with a CIFAR stem; `forward` returns the final
feature map, its pooled vector F (what the distillation losses compare) and the logits.
`evalnet-cnn` is a plain VGG-style CNN of another architecture, trained with another seed, whose
penultimate features give the domain FD metric, so a student tuned to the DenseNet's features
cannot game its own score.

Both train with the public code's recipe (SGD, momentum 0.9, weight decay 5e-4, lr ÷10 at 50% and
75%, crop + flip, AutoAugment + Cutout on CIFAR) on images in [-1, 1], the diffusion model's range;
docs/fidelity.md lists where rdd's recipe differs.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.models import DenseNet
from tqdm import tqdm

from rdd.checkpoint import first_nonfinite, load_checkpoint, load_module_state, save_checkpoint
from rdd.config import ExperimentConfig
from rdd.data import class_count, load_dataset, random_hflip
from rdd.distributed import default_device
from rdd.errors import RddError
from rdd.layout import CLASSIFIER_FILE, EVALNET_FILE


class ClassifierOutput(NamedTuple):
    """What a classifier returns to the losses: CFD reads `pooled`, the pixel-to-pixel terms `feature_map`."""

    feature_map: torch.Tensor  # (N, C, H, W), before the final ReLU
    pooled: torch.Tensor  # (N, C): the feature vector F of eq. 3 (DenseNet) / the FD features (evalnet)
    logits: torch.Tensor  # (N, num_classes)


STEMS = ("public", "bare")


class FeatureClassifier(DenseNet):
    """torchvision DenseNet with a CIFAR stem: a 3x3 stride-1 conv and no max pool.

    `stem="public"` keeps torchvision's norm0 and relu0 after the conv, as the public code's DenseNet
    does (classifier/densenet.py of cantbebetter2/RDD); `stem="bare"` is the conv alone, the stem of the
    original CIFAR DenseNets (Huang et al.) and of the classifier shipped in assets/fmnist.
    Subclassing (rather than wrapping) keeps torchvision's parameter names, so a plain DenseNet
    state dict with this stem loads as is. Each stride-2 transition halves the map: a 32x32 input to
    the 4-block DenseNet-201 and a 16x16 input to the 3-block small net both end at 4x4.
    """

    def __init__(self, in_channels: int, num_classes: int, growth_rate: int, block_config: tuple,
                 num_init_features: int, bn_size: int, stem: str = "public"):
        if stem not in STEMS:
            raise RddError(f"unknown classifier stem '{stem}'; choose one of {', '.join(STEMS)}")
        super().__init__(growth_rate=growth_rate, block_config=tuple(block_config),
                         num_init_features=num_init_features, bn_size=bn_size, num_classes=num_classes)
        self.features.conv0 = nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(self.features.conv0.weight)
        del self.features.pool0
        if stem == "bare":
            del self.features.norm0, self.features.relu0
        self.stem = stem

    @property
    def num_features(self) -> int:
        return self.classifier.in_features

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        fmap = self.features(x)  # ends with norm5, no ReLU
        pooled = F.adaptive_avg_pool2d(F.relu(fmap), 1).flatten(1)
        return ClassifierOutput(fmap, pooled, self.classifier(pooled))


class EvalNet(nn.Module):
    """Plain VGG-style CNN: conv-BN-ReLU blocks, global pool, a penultimate layer, linear logits."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple = (32, 32, "M", 64, 64, "M", 128, 128),
                 feature_dim: int = 128):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            if w == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        layers.pop()  # the map is returned before its last ReLU, like the DenseNet's
        self.features = nn.Sequential(*layers)
        self.penultimate = nn.Linear(c, feature_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)

    @property
    def num_features(self) -> int:
        return self.penultimate.out_features

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        fmap = self.features(x)
        pooled = F.relu(self.penultimate(F.adaptive_avg_pool2d(F.relu(fmap), 1).flatten(1)))
        return ClassifierOutput(fmap, pooled, self.classifier(pooled))


ARCHS = {
    # The paper's DenseNet-201 (§5.1; 1920 features).
    "densenet201": dict(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64, bn_size=4),
    # A small 3-block DenseNet-BC for 16x16 Fashion-MNIST: ~0.18M parameters, fast on a CPU.
    "densenet-bc-small": dict(growth_rate=12, block_config=(6, 6, 6), num_init_features=24, bn_size=4),
    # The independent network of the domain FD metric.
    "evalnet-cnn": dict(),
}


def build_classifier(arch: str, in_channels: int, num_classes: int = 10, stem: str = "public") -> nn.Module:
    if arch not in ARCHS:
        raise RddError(f"unknown classifier arch '{arch}'; choose one of {', '.join(ARCHS)}")
    if arch == "evalnet-cnn":
        return EvalNet(in_channels, num_classes, **ARCHS[arch])
    return FeatureClassifier(in_channels, num_classes, **ARCHS[arch], stem=stem)


# ----------------------------------------------------------------------------------------------
# Batched augmentation on tensors in [-1, 1]: random per-image draws, no per-sample PIL round trip.

def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by `pad` with -1 (black, as the data's border) and cut a random window per image."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    return xp[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols]


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Paint one size x size square per image black (-1), centre possibly on the border (DeVries & Taylor).
    The public code applies Cutout before normalisation, so its patches are black too."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(hole.unsqueeze(1), -1.0)


def auto_augment(x: torch.Tensor) -> torch.Tensor:
    """torchvision's CIFAR-10 AutoAugment policy, one draw per image (it works on uint8 images)."""
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    policy = AutoAugment(AutoAugmentPolicy.CIFAR10)
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    u8 = torch.stack([policy(img) for img in u8])  # per image: a batch call would share one sub-policy
    return u8.float() / 127.5 - 1


def augment(x: torch.Tensor, cfg: ExperimentConfig) -> torch.Tensor:
    res = x.shape[-1]
    x = random_crop(x, max(1, res // 8))
    if cfg.data.hflip:  # Fashion-MNIST is not flip-augmented: its classes have handedness cues
        x = random_hflip(x)
    if cfg.classifier.autoaugment:
        x = cutout(auto_augment(x), res // 2)
    return x


# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 500, device: str | torch.device = "cpu") -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        logits = model(x.to(device)).logits
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def classifier_splits(cfg: ExperimentConfig, seed: int, train_limit: int | None, test_limit: int | None):
    """(shuffled training loader, test set): the first N images of each split when limited."""
    cc = cfg.classifier
    train_set, test_set = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    train_limit = train_limit if train_limit is not None else cc.train_limit
    if train_limit is not None:
        train_set = Subset(train_set, range(min(train_limit, len(train_set))))
    if cc.batch_size > len(train_set):
        raise RddError(f"classifier.batch_size {cc.batch_size} is larger than the {len(train_set)} training images; "
                       "lower classifier.batch_size")
    if test_limit is not None:
        test_set = Subset(test_set, range(min(test_limit, len(test_set))))
    loader = DataLoader(train_set, batch_size=cc.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                        drop_last=len(train_set) >= 2 * cc.batch_size,  # a lone tiny last batch upsets BatchNorm
                        generator=torch.Generator().manual_seed(seed))
    return loader, test_set


def train_epoch(model: nn.Module, loader: DataLoader, opt, sched, cfg: ExperimentConfig, device, desc: str,
                progress: bool) -> dict:
    """One epoch of SGD on cross-entropy; returns its mean loss and training accuracy."""
    model.train()
    loss_sum = correct = seen = 0
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        if cfg.classifier.augment:
            x = augment(x, cfg)
        logits = model(x).logits
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"loss": loss_sum / seen, "train_acc": correct / seen}


def train_classifier(cfg: ExperimentConfig, out_dir: str | Path, arch: str | None = None, seed: int | None = None,
                     progress: bool = True, train_limit: int | None = None, test_limit: int | None = None) -> dict:
    """Train a classifier on cfg.data with the public code's recipe; write classifier.pt (evalnet.pt for the
    evaluation network) and its metrics log.

    With data.holdout > 0 the weights of the epoch with the best accuracy on the held-out training
    images are kept (the public code keeps the best test accuracy, which tunes on the test set).

    `arch`/`seed` override cfg.classifier (the evaluation network uses arch='evalnet-cnn' and another
    seed); `train_limit`/`test_limit` keep the first N images of each split (tests, quick runs).
    """
    cc = cfg.classifier
    arch = arch or cc.arch
    seed = cc.seed if seed is None else seed
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    device = default_device()
    loader, test_set = classifier_splits(cfg, seed, train_limit, test_limit)
    model = build_classifier(arch, cfg.data.channels, class_count(cfg.data), cc.stem).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cc.lr, momentum=cc.momentum, weight_decay=cc.weight_decay)
    # ÷10 at 50% and 75% of training, counted in iterations so that 1-epoch runs decay too.
    total = cc.epochs * len(loader)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [math.ceil(0.5 * total), math.ceil(0.75 * total)], gamma=0.1)

    val_set = load_dataset(cfg.data, "val") if cfg.data.holdout else None
    test_acc, best_val, best_weights = 0.0, -1.0, None
    kind = "evalnet" if arch == "evalnet-cnn" else "classifier"
    with open(out_dir / f"{kind}-metrics.jsonl", "w") as log:  # its own name: a train run in the same folder keeps its log
        for epoch in range(cc.epochs):
            row = {"epoch": epoch + 1, **train_epoch(model, loader, opt, sched, cfg, device,
                                                      f"{arch} epoch {epoch + 1}/{cc.epochs}", progress)}
            test_acc = evaluate_accuracy(model, test_set, device=device)
            row.update(test_acc=test_acc, lr=opt.param_groups[0]["lr"])
            if val_set is not None:
                row["val_acc"] = evaluate_accuracy(model, val_set, device=device)
                if row["val_acc"] > best_val:
                    best_val, best_weights = row["val_acc"], {k: v.clone() for k, v in model.state_dict().items()}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if progress:
                print(json.dumps(row))
    if best_weights is not None:
        model.load_state_dict(best_weights)
        test_acc = evaluate_accuracy(model, test_set, device=device)
    path = out_dir / (EVALNET_FILE if kind == "evalnet" else CLASSIFIER_FILE)
    save_classifier(model, cfg, arch, test_acc, path)
    return {"test_accuracy": test_acc, "path": str(path)}


def save_classifier(model: nn.Module, cfg: ExperimentConfig, arch: str, test_acc: float, path: Path) -> None:
    bad = first_nonfinite(model.state_dict())
    if bad:
        raise RddError(f"classifier training diverged: weight '{bad}' holds nan or inf; lower classifier.lr "
                       f"(now {cfg.classifier.lr:g}); nothing was written to {path}")
    save_checkpoint(dict(kind="classifier", arch=arch, stem=cfg.classifier.stem, in_channels=cfg.data.channels,
                         num_classes=class_count(cfg.data), resolution=cfg.data.resolution, model=model.state_dict(),
                         test_accuracy=test_acc, config=dataclasses.asdict(cfg)), path)


def load_classifier(path: str | Path, device: str | torch.device = "cpu", arch: str | None = None,
                    in_channels: int | None = None, num_classes: int | None = None) -> nn.Module:
    """Load a frozen classifier (eval mode, no gradients).

    Takes a checkpoint of `train_classifier` (kind 'classifier'), or a plain torchvision-style
    DenseNet state dict, e.g. a user's ImageNet 64x64 DenseNet-201, when `arch` and `in_channels`
    are passed (`num_classes` defaults to the rows of classifier.weight). Such weights must use a
    CIFAR stem of FeatureClassifier (3x3 conv0, no pool0; with or without norm0, which is detected);
    a 'module.' prefix from DDP is removed. rdd checkpoints from before the `stem` setting have the bare stem.
    """
    state = load_checkpoint(path)
    if "kind" in state:
        if state["kind"] != "classifier":
            raise RddError(f"checkpoint '{path}' is a '{state['kind']}' checkpoint, not a classifier; "
                           "pass one written by `rdd train-classifier`")
        if arch is not None and arch != state["arch"]:
            raise RddError(f"checkpoint '{path}' holds a '{state['arch']}' classifier, not '{arch}'")
        arch, in_channels, num_classes, weights = state["arch"], state["in_channels"], state["num_classes"], state["model"]
        stem = state.get("stem", "bare")
    else:
        if arch is None or in_channels is None:
            raise RddError(f"checkpoint '{path}' is not an rdd classifier checkpoint; for a plain DenseNet "
                           "state dict pass arch= and in_channels= (and num_classes=)")
        weights = state.get("state_dict", state)
        if not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise RddError(f"checkpoint '{path}' is not a state dict of tensors")
        weights = {k.removeprefix("module."): v for k, v in weights.items()}
        if num_classes is None:
            if "classifier.weight" not in weights:
                raise RddError(f"checkpoint '{path}' has no classifier.weight; pass num_classes=")
            num_classes = weights["classifier.weight"].shape[0]
        stem = "public" if "features.norm0.weight" in weights else "bare"
    model = build_classifier(arch, in_channels, num_classes, stem)
    load_module_state(model, weights, path, f"'{arch}' classifier")
    model.to(device).eval().requires_grad_(False)
    return model
