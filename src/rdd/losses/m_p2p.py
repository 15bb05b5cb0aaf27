"""Memory-based pixel-to-pixel relational distillation, M_P2P (paper eq. 8-9)."""

import torch

from rdd.losses.kl import kl_rows
from rdd.losses.pixels import unit_pixels


def m_p2p_loss(
    map_s: torch.Tensor, map_t: torch.Tensor, contrast: torch.Tensor, tau: float
) -> torch.Tensor:
    """Match the similarities P = F_n E^T (A, V) of each image's pixels to V queue embeddings.

    map_s is the student map after the projection head, map_t the teacher map, both (N, C, H, W);
    contrast (V, C) are l2-normalised teacher pixels drawn from the PixelQueue, used as given.
    L = mean over images n and rows a of KL(softmax(P^T_a / tau) || softmax(P^S_a / tau)).
    """
    # Rows (N*A, C): one matrix product, where (N, A, C) @ (C, V) would broadcast the queue over N batched products.
    p_s = unit_pixels(map_s).flatten(0, 1) @ contrast.to(map_s).T
    p_t = unit_pixels(map_t).flatten(0, 1) @ contrast.to(map_t).T
    return kl_rows(p_t, p_s, tau, tau)
