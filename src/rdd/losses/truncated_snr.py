"""Base-model loss (Salimans & Ho 2022, as paper §5.1): L = omega_t ||x_hat - x||^2 with omega_t = max(alpha_t^2 / sigma_t^2, 1)."""
from __future__ import annotations

import torch
from torch import nn

from rdd.diffusion import COSINE

TRAIN_GRID = 1024  # t is drawn from {1/T, ..., 1}, the public code's discrete grid of T = 1024 steps


class TruncatedSNRLoss:
    """Denoising objective of the base (teacher) model: truncated-SNR weighted x-error."""

    def __init__(self):
        self.modules = nn.ModuleDict()

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        t = torch.randint(1, TRAIN_GRID + 1, (x.shape[0],), device=x.device).float() / TRAIN_GRID
        z_t = COSINE.diffuse(x, t, torch.randn_like(x))
        x_hat = model(z_t, t, labels)
        per_image = (x_hat.float() - x).pow(2).flatten(1).mean(1)
        # A tensor, not .item(): no GPU sync per step; the loop calls float() when it logs.
        return (COSINE.truncated_snr_weight(t) * per_image).mean(), {"mse": per_image.mean().detach()}
