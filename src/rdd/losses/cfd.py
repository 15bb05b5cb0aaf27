"""Classifier-based feature distillation, CFD (paper eq. 4)."""

import torch

from rdd.losses.kl import kl_rows


def cfd_loss(feat_s: torch.Tensor, feat_t: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmax(F^T / tau) || softmax(F^S)) on pooled (N, C) features, mean over the batch.

    Only the teacher side is softened by the temperature, as in eq. 4.
    """
    return kl_rows(feat_t, feat_s, tau, 1.0)
