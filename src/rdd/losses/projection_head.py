"""Student-side projection head applied before M_P2P (paper §4)."""

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """1x1 conv -> BatchNorm -> ReLU -> 1x1 conv, C -> C channels (hidden width defaults to C).

    Trained with the student and discarded at inference. Its initial weights come from `seed` alone
    (not the global random state), so the same run gives the same head, and every process of a
    distributed run starts from the same one. `bias=False` drops the last conv's bias, as the public
    `Memory_p2p_loss.project_head` does (losses/losses.py of cantbebetter2/RDD, commit 80883607).
    """

    def __init__(self, channels: int, hidden: int | None = None, bias: bool = True, seed: int = 0):
        super().__init__()
        hidden = hidden or channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(channels, hidden, 1, bias=False),  # the BatchNorm's shift is the bias
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, channels, 1, bias=bias),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
