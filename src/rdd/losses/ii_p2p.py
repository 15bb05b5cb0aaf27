"""Intra-image pixel-to-pixel relational distillation, II_P2P (paper eq. 6)."""

from __future__ import annotations

import torch

from rdd.losses.batch import DistillBatch
from rdd.losses.kl import kl_rows
from rdd.losses.pixels import unit_pixels
from rdd.losses.term import LossTerm, TermConfig


def ii_p2p_loss(map_s: torch.Tensor, map_t: torch.Tensor, tau: float) -> torch.Tensor:
    """Match the (A, A) pixel-similarity matrices M = F F^T of each image, maps (N, C, H, W).

    L = mean over images n and rows a of KL(softmax(M^T_a / tau) || softmax(M^S_a / tau)).
    """
    f_s, f_t = unit_pixels(map_s), unit_pixels(map_t)
    m_s = f_s @ f_s.transpose(1, 2)
    m_t = f_t @ f_t.transpose(1, 2)
    return kl_rows(m_t, m_s, tau, tau)


class II_P2P(LossTerm):
    """Eq. 6: pixel-to-pixel relations within each image."""

    needs_classifier = True
    temperature_key = "distill.tau_ii"

    def __init__(self, tau: float):
        super().__init__()
        self.tau = tau

    @classmethod
    def from_config(cls, config: TermConfig) -> "II_P2P":
        return cls(config.distill.tau_ii)

    def forward(self, b: DistillBatch) -> torch.Tensor:
        return ii_p2p_loss(b.features_student.feature_map, b.features_teacher.feature_map, self.tau)
