"""Classifier-based feature distillation, CFD (paper eq. 4)."""

from __future__ import annotations

import torch

from rdd.losses.batch import DistillBatch
from rdd.losses.kl import kl_rows
from rdd.losses.term import LossTerm, TermConfig


def cfd_loss(feat_s: torch.Tensor, feat_t: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmax(F^T / tau) || softmax(F^S)) on pooled (N, C) features, mean over the batch.

    Only the teacher side is softened by the temperature, as in eq. 4.
    """
    return kl_rows(feat_t, feat_s, tau, 1.0)


class CFD(LossTerm):
    """Eq. 4: KL(softmax(F^T / tau) || softmax(F^S)) on pooled classifier features."""

    needs_classifier = True
    temperature_key = "distill.tau_cfd"

    def __init__(self, tau: float):
        super().__init__()
        self.tau = tau

    @classmethod
    def from_config(cls, config: TermConfig) -> "CFD":
        return cls(config.tau_cfd)

    def forward(self, b: DistillBatch) -> torch.Tensor:
        return cfd_loss(b.features_student.pooled, b.features_teacher.pooled, self.tau)
