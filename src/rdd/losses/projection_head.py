"""Student-side projection head applied before M_P2P (paper §4)."""

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """1x1 conv -> BatchNorm -> ReLU -> 1x1 conv, C -> C channels (hidden width defaults to C).

    Trained with the student and discarded at inference. Under DDP, use `sync_batchnorm()`
    so the BatchNorm statistics span all GPUs, as in the public code. `bias=False` drops the last
    conv's bias, as the public `Memory_p2p_loss.project_head` does (MM24_RDD/losses/losses.py).
    """

    def __init__(self, channels: int, hidden: int | None = None, bias: bool = True):
        super().__init__()
        hidden = hidden or channels
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),  # the BatchNorm's shift is the bias
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def sync_batchnorm(self) -> nn.Module:
        """Convert the BatchNorm to SyncBatchNorm (for DDP), in place; returns this head."""
        return nn.SyncBatchNorm.convert_sync_batchnorm(self)
