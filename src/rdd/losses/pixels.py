"""Per-pixel embeddings of a feature map, shared by the pixel-to-pixel losses and the queue."""

import torch
import torch.nn.functional as F


def unit_pixels(fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) feature map -> (N, A, C) pixel embeddings, A = H*W, l2-normalised along C."""
    return F.normalize(fmap.flatten(2).transpose(1, 2), dim=-1)
