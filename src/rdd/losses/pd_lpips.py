"""PD + LPIPS (paper §5): eq. 2 with LPIPS in place of the squared error."""
from __future__ import annotations

from pathlib import Path

import torch

from rdd.checkpoint import load_checkpoint
from rdd.config import DistillConfig
from rdd.errors import RddError
from rdd.losses.batch import DistillBatch
from rdd.losses.lpips_loss import _BACKBONES, LPIPSLoss
from rdd.losses.term import LossTerm, TermConfig


class PD_LPIPS(LossTerm):
    """PD + LPIPS (§5): eq. 2 with the squared error replaced by LPIPS(x~, x_hat_S)."""

    def __init__(self, lpips: LPIPSLoss):
        super().__init__()
        # Frozen weights read from a file are no training state: kept out of state_dict() and parameters().
        object.__setattr__(self, "lpips", lpips)

    @classmethod
    def from_config(cls, config: TermConfig) -> "PD_LPIPS":
        return cls(LPIPSLoss(config.distill.lpips_net, backbone_weights=config.distill.lpips_weights))

    @classmethod
    def check_config(cls, dc: DistillConfig) -> None:
        """The LPIPS loss reads its backbone file as it is: refuse a damaged or wrong one here, in one line."""
        from torchvision import models

        if not dc.lpips_weights or dc.lpips_net not in _BACKBONES:
            return
        builder, _, name = _BACKBONES[dc.lpips_net]
        if not Path(dc.lpips_weights).is_file():
            raise RddError(f"distill.lpips_weights '{dc.lpips_weights}' not found; pass torchvision's ImageNet {name} weights file")
        weights = load_checkpoint(dc.lpips_weights)
        with torch.device("meta"):
            expected = getattr(models, builder)().state_dict()
        bad = [k for k in expected if getattr(weights.get(k), "shape", None) != expected[k].shape]
        bad += sorted(weights.keys() - expected.keys())
        if bad:
            raise RddError(f"distill.lpips_weights '{dc.lpips_weights}' is not torchvision's {name} state dict ({len(bad)} "
                           f"missing, extra or reshaped tensors, e.g. '{bad[0]}'); pass its ImageNet weights file")

    def _apply(self, fn, recurse=True):
        self.lpips._apply(fn, recurse)  # .to(device) still moves the frozen LPIPS network
        return super()._apply(fn, recurse)

    def forward(self, b: DistillBatch) -> torch.Tensor:
        return (b.weight * self.lpips(b.x_student, b.x_target)).mean()
