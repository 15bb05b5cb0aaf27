"""Inter-sample pixel-to-pixel relational distillation, IS_P2P (paper eq. 7)."""

import torch

from rdd.losses.kl import kl_rows
from rdd.losses.pixels import unit_pixels


def is_p2p_loss(map_s: torch.Tensor, map_t: torch.Tensor, tau: float) -> torch.Tensor:
    """Match the (A, A) cross-image similarities R_ij = F_i F_j^T of every ordered pair (i, j).

    L = (1/N^2) sum_ij mean_a KL(softmax(R^T_ij,a / tau) || softmax(R^S_ij,a / tau)).
    Memory grows as N^2 A^2. With N = 1 this is II_P2P.
    """
    f_s, f_t = unit_pixels(map_s), unit_pixels(map_t)
    r_s = torch.einsum("iac,jbc->ijab", f_s, f_s)
    r_t = torch.einsum("iac,jbc->ijab", f_t, f_t)
    return kl_rows(r_t, r_s, tau, tau)
