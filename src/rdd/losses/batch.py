"""What every distillation loss term reads: one batch of student and teacher images."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from rdd.diffusion import COSINE, Schedule
from rdd.errors import RddError


@dataclass
class DistillBatch:
    """What the terms see: the student's x_hat, the teacher's x~, t, and classifier features of both.

    `t` is needed only by the terms weighted by omega_t (PD, PD + LPIPS); `classifier` only by the
    terms on classifier features. Features are computed once per batch, on first use.
    """

    x_student: torch.Tensor
    x_target: torch.Tensor
    t: torch.Tensor | None = None
    classifier: nn.Module | None = None
    schedule: Schedule = field(default_factory=lambda: COSINE)  # the teacher's
    loss_weight: str = "truncated_snr"  # the stage's omega_t (rdd.diffusion.LOSS_WEIGHTS), chosen with the student's reading

    @cached_property
    def weight(self) -> torch.Tensor:
        if self.t is None:
            raise RddError("this loss is weighted by omega_t (eq. 2): pass the times t of the batch")
        return self.schedule.loss_weight(self.t, self.loss_weight)

    @cached_property
    def features_student(self):
        return self._classifier()(self.x_student)  # gradients reach the student through the frozen classifier

    @cached_property
    def features_teacher(self):
        with torch.no_grad():
            return self._classifier()(self.x_target)

    def _classifier(self) -> nn.Module:
        if self.classifier is None:
            raise RddError("this loss compares classifier features: pass a classifier")
        return self.classifier
