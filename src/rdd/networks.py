"""The x-predicting U-Net: diffusers' `UNet2DModel` built from named presets.

Time enters as a continuous value: t in [0, 1] is scaled by 1000 before the sinusoidal
embedding so its frequencies span the same range as a 1000-step discrete model.
"""
from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from rdd.config import DataConfig, ModelConfig
from rdd.errors import RddError

TIME_SCALE = 1000.0

PRESETS: dict[str, dict] = {
    # The paper's CIFAR-10 network (DDPM's): attention at 16x16, i.e. the second level.
    "paper-cifar10": dict(
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
    ),
    # The paper's ImageNet 64x64 network: attention at 16x16 and 8x8 (levels 3 and 4).
    "paper-imagenet64": dict(
        block_out_channels=(128, 256, 384, 512),
        layers_per_block=3,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=64,
    ),
    # About 1M parameters: a Fashion-MNIST teacher that trains on a laptop CPU at 16x16.
    "fmnist-small": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        norm_num_groups=16,
    ),
    # A few hundred thousand parameters, for tests.
    "tiny": dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16,
        norm_num_groups=8,
    ),
}


class XPredictionUNet(nn.Module):
    """x_hat = UNet(z_t, 1000 t, label); conditional when `num_classes` > 0."""

    def __init__(self, unet: UNet2DModel, num_classes: int):
        super().__init__()
        self.unet = unet
        self.num_classes = num_classes

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and labels is None:
            raise RddError("this model is class-conditional: pass class labels")
        labels = labels if self.num_classes else None
        return self.unet(z_t, t * TIME_SCALE, class_labels=labels).sample


def build_model(model: ModelConfig, data: DataConfig) -> XPredictionUNet:
    if model.name not in PRESETS:
        raise RddError(f"unknown model.name '{model.name}'; choose one of {', '.join(PRESETS)}")
    unet = UNet2DModel(
        sample_size=data.resolution,
        in_channels=data.channels,
        out_channels=data.channels,
        dropout=model.dropout,
        num_class_embeds=model.num_classes or None,
        **PRESETS[model.name],
    )
    return XPredictionUNet(unet, model.num_classes)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
