"""The networks of the frozen feature classifier of CFD/RCFD/RDD (paper §3.2, eq. 3) and of the
independent evaluation network, and how their checkpoints load (rdd.classifier trains them).

`FeatureClassifier` is torchvision's DenseNet with a CIFAR stem; `forward` returns the final
feature map, its pooled vector F (what the distillation losses compare) and the logits.
`evalnet-cnn` is a plain VGG-style CNN of another architecture, trained with another seed, whose
penultimate features give the domain FD metric, so a student tuned to the DenseNet's features
cannot game its own score.

Both see images in [-1, 1], the diffusion model's range.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import DenseNet

from rdd.checkpoint import load_checkpoint, load_module_state, require_keys
from rdd.errors import RddError


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


def load_classifier(path: str | Path, device: str | torch.device = "cpu", arch: str | None = None,
                    in_channels: int | None = None, num_classes: int | None = None) -> nn.Module:
    """Load a frozen classifier (eval mode, no gradients).

    Takes a checkpoint of `rdd.classifier.train_classifier` (kind 'classifier'), or a plain torchvision-style
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
        require_keys(state, ["arch", "in_channels", "num_classes", "model"], path, "classifier")
        arch, in_channels, num_classes, weights = state["arch"], state["in_channels"], state["num_classes"], state["model"]
        bad = next((k for k in ("in_channels", "num_classes") if not isinstance(state[k], int) or not 1 <= state[k] <= 100_000), None)
        if arch not in ARCHS or bad:
            field = f"'{bad}' is {state[bad]!r}" if bad else f"'arch' is {arch!r}"
            raise RddError(f"classifier checkpoint '{path}': field {field}, not what rdd writes; use another copy")
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
