"""Memory-based pixel-to-pixel relational distillation, M_P2P (paper eq. 8-9)."""

from __future__ import annotations

import torch
from torch import nn

from rdd.losses.batch import DistillBatch
from rdd.losses.kl import kl_rows
from rdd.losses.pixel_queue import PixelQueue
from rdd.losses.pixels import unit_pixels
from rdd.losses.projection_head import ProjectionHead
from rdd.losses.term import LossTerm, TermConfig


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


class M_P2P(LossTerm):
    """Eq. 8-9: relations of each pixel to V teacher pixels drawn from the memory queue.

    The student's map goes through the projection head first. K teacher pixels are pushed into the
    queue after the loss (the paper), or before the draw (`push_first`, the public code). The queue
    and the head are submodules: they travel with the state dict and the device.
    """

    needs_classifier = True
    temperature_key = "distill.tau_m"

    def __init__(self, tau: float, queue: PixelQueue, head: ProjectionHead, num_contrast: int, push_per_step: int,
                 push_first: bool = False, push_scope: str = "global", separate_head_optimizer: bool = False):
        super().__init__()
        self.tau, self.queue, self.head = tau, queue, head
        self.num_contrast, self.push_per_step = num_contrast, push_per_step
        self.push_first, self.push_scope = push_first, push_scope
        self.separate_head_optimizer = separate_head_optimizer

    @classmethod
    def from_config(cls, config: TermConfig) -> "M_P2P":
        dc, fid, channels = config.distill, config.fidelity, config.feature_channels
        queue = PixelQueue(dc.queue_size, channels, seed=config.seed, layout=fid.queue_layout,
                           draw_from=fid.queue_draw, wrap=fid.queue_wrap)
        head = ProjectionHead(channels, bias=fid.head_bias, seed=config.seed)
        return cls(dc.tau_m, queue, head, fid.num_contrast, dc.push_per_step, push_first=fid.queue_push == "before",
                   push_scope=fid.push_scope, separate_head_optimizer=fid.head_optimizer == "separate")

    def separately_optimized(self) -> list[nn.Parameter]:
        return list(self.head.parameters()) if self.separate_head_optimizer else []

    def forward(self, b: DistillBatch) -> torch.Tensor:
        map_t = b.features_teacher.feature_map
        if self.push_first:
            self.queue.push(map_t, self.push_per_step, self.push_scope)
        loss = m_p2p_loss(self.head(b.features_student.feature_map), map_t, self.queue.draw(self.num_contrast), self.tau)
        if not self.push_first:
            self.queue.push(map_t, self.push_per_step, self.push_scope)
        return loss
