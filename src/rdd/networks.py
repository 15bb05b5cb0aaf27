"""The x-predicting U-Net: diffusers' `UNet2DModel` built from named presets, or loaded from a diffusers folder.

Time enters as a continuous value: rdd's own networks see 1000 t, so the sinusoidal embedding's
frequencies span the same range as a 1000-step discrete model; a diffusers network sees its own
schedule's timestep (rdd.diffusion.DiscreteSchedule).
"""
from __future__ import annotations

import copy

import torch
from diffusers import UNet2DModel
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from rdd.config import DataConfig, ModelConfig
from rdd.diffusion import COSINE, EPS_READING_MIN_ALPHA, EPSILON_V, READINGS, Schedule, schedule_from_config
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
        if prediction_type not in READINGS:
            raise RddError(f"unknown prediction_type '{prediction_type}'; choose one of {', '.join(READINGS)}")
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


def student_reading(teacher: XPredictionUNet, teacher_distilled: bool, asked: str = "auto", loss_weight: str = "auto") -> dict:
    """How a PD student reads its output, and the loss weight that goes with it (docs/diffusers.md).

    `auto` is the measured recipe: the student of a base epsilon teacher with alpha_1 clearly above 0
    reads eps, starting exactly at its teacher, under the eps-space weight SNR (the x-space weight
    max(SNR, 1) lets the t = 1 step, x-hat = (z - sigma eps-hat) / alpha_1, dominate the loss); every
    later stage of that chain reads v (that weight leaves t = 1 untrained, which a second eps stage pays
    for). An eps teacher with alpha_1 near 0 (the improved-DDPM cosine, zero terminal SNR) gives no usable
    x-hat at t = 1 read as eps: its students read v (epsilon_v, eps except just before t = 1, starts
    closer to the teacher but measured worse: benchmarks/diffusers_teachers.md); v, x and epsilon_v
    teachers keep their reading."""
    alpha_1 = float(teacher.schedule.alpha_sigma(torch.tensor(1.0))[0])
    if asked != "auto":
        reading, reason = asked, "set by distill.student_reading"
    elif teacher.prediction_type != "epsilon":
        reading, reason = teacher.prediction_type, "the teacher's reading: the student starts as its teacher"
    elif teacher_distilled:
        reading, reason = "v_prediction", "a later stage of an eps chain: its eps-read teacher left t = 1 untrained"
    elif alpha_1 < EPS_READING_MIN_ALPHA:
        reading, reason = "v_prediction", f"alpha_1 = {alpha_1:.2g}: eps gives no usable x-hat at t = 1"
    else:
        reading, reason = "epsilon", f"base eps teacher, alpha_1 = {alpha_1:.2g}: the student starts as its teacher"
    if loss_weight == "auto":
        loss_weight = {"epsilon": "snr", EPSILON_V: EPSILON_V}.get(reading, "truncated_snr")
    return {"prediction_type": reading, "loss_weight": loss_weight, "alpha_at_t1": alpha_1, "reason": reason}


def student_copy(teacher: XPredictionUNet, prediction_type: str | None = None, dropout: float | None = None) -> XPredictionUNet:
    """A PD student starts as a copy of its teacher, read as `prediction_type` (default: the teacher's), with
    the residual blocks' dropout set to `dropout` when given: a base model may train with dropout (CIFAR-10:
    0.1) where its students train without."""
    student = copy.deepcopy(teacher)
    student.prediction_type = prediction_type or teacher.prediction_type
    if dropout is not None:
        for block in student.modules():
            if isinstance(block, ResnetBlock2D):  # the dropout that UNet2DModel(dropout=...) sets; attention keeps its own
                block.dropout.p = dropout
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
