"""The x-predicting U-Net: diffusers' `UNet2DModel` built from named presets, or loaded from a diffusers folder.

Time enters as a continuous value: rdd's own networks see 1000 t, so the sinusoidal embedding's
frequencies span the same range as a 1000-step discrete model; a diffusers network sees its own
schedule's timestep (rdd.diffusion.DiscreteSchedule).
"""
from __future__ import annotations

import copy

import torch
from diffusers import UNet2DModel
from torch import nn

from rdd.config import DataConfig, ModelConfig
from rdd.diffusion import COSINE, PREDICTION_TYPES, Schedule, schedule_from_config
from rdd.errors import RddError

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
    """x_hat from UNet(z_t, schedule.timestep(t), label), whose output is read as diffusers' `prediction_type`
    (rdd's own networks: x on the cosine schedule); conditional when `num_classes` > 0."""

    def __init__(self, unet: UNet2DModel, num_classes: int, schedule: Schedule = COSINE, prediction_type: str = "sample"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise RddError(f"unknown prediction_type '{prediction_type}'; choose one of {', '.join(PREDICTION_TYPES)}")
        self.unet = unet
        self.num_classes = num_classes
        self.schedule = schedule
        self.prediction_type = prediction_type

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and labels is None:
            raise RddError("this model is class-conditional: pass class labels")
        labels = labels if self.num_classes else None
        out = self.unet(z_t, self.schedule.timestep(t), class_labels=labels).sample
        return self.schedule.to_x(out, z_t, t, self.prediction_type)


def student_prediction_type(teacher_type: str) -> str:
    """A PD student reads its output as v where its teacher predicted epsilon: x = (z - sigma eps) / alpha
    cannot give the student's first step, where alpha_1 is (near) 0 (Salimans & Ho 2022, §4)."""
    return "v_prediction" if teacher_type == "epsilon" else teacher_type


def student_copy(teacher: XPredictionUNet) -> XPredictionUNet:
    """A PD student starts as a copy of its teacher."""
    student = copy.deepcopy(teacher)
    student.prediction_type = student_prediction_type(teacher.prediction_type)
    return student


def diffusers_spec(model: XPredictionUNet) -> dict:
    """What ModelConfig.diffusers stores to rebuild a network that came from a diffusers folder."""
    unet = {k: v for k, v in model.unet.config.items() if not k.startswith("_")}
    return {"unet": unet, "schedule": dict(model.schedule.config), "prediction_type": model.prediction_type}


def build_model(model: ModelConfig, data: DataConfig) -> XPredictionUNet:
    if model.diffusers:
        spec = model.diffusers
        return XPredictionUNet(UNet2DModel.from_config(spec["unet"]), model.num_classes,
                               schedule_from_config(spec["schedule"]), spec["prediction_type"])
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
