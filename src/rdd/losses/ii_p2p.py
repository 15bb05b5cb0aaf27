"""Intra-image pixel-to-pixel relational distillation, II_P2P (paper eq. 6)."""

import torch

from rdd.losses.kl import kl_rows
from rdd.losses.pixels import unit_pixels


def ii_p2p_loss(map_s: torch.Tensor, map_t: torch.Tensor, tau: float) -> torch.Tensor:
    """Match the (A, A) pixel-similarity matrices M = F F^T of each image, maps (N, C, H, W).

    L = mean over images n and rows a of KL(softmax(M^T_a / tau) || softmax(M^S_a / tau)).
    """
    f_s, f_t = unit_pixels(map_s), unit_pixels(map_t)
    m_s = f_s @ f_s.transpose(1, 2)
    m_t = f_t @ f_t.transpose(1, 2)
    return kl_rows(m_t, m_s, tau, tau)
