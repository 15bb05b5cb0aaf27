"""Progressive distillation, PD (paper eq. 2)."""
from __future__ import annotations

import torch

from rdd.losses.batch import DistillBatch
from rdd.losses.term import LossTerm


class PD(LossTerm):
    """Eq. 2: L_PD = omega_t ||x~ - x_hat_S(z_t, t)||^2."""

    def forward(self, b: DistillBatch) -> torch.Tensor:
        return (b.weight * (b.x_student.float() - b.x_target).pow(2).flatten(1).mean(1)).mean()
