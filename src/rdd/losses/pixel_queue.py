"""FIFO memory of teacher pixel embeddings for M_P2P (paper §4, eq. 8-9).

Its behaviour follows the fidelity switches (rdd.fidelity): what a row holds (`layout`), which
rows are drawn (`draw_from`) and how the write pointer wraps (`wrap`).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rdd.limits import check_memory
from rdd.losses.pixels import unit_pixels


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def queue_rows(map_t: torch.Tensor, layout: str) -> torch.Tensor:
    """Candidate queue rows (N*H*W, C) of a teacher map (N, C, H, W).

    `pixels`: the l2-normalised embedding of each pixel (the paper's text).
    `flat_view`: the public code's enqueue, which normalises along C and then reads the NCHW memory
    as `view(C, -1)` without moving C last: column m of that view is row m here, a mix of
    channels of different pixels and images (losses/losses.py at commit 80883607, `_dequeue_and_enqueue`).
    Rows are l2-normalised again once they are picked, as there.
    """
    if layout == "pixels":
        return unit_pixels(map_t).flatten(0, 1)
    channels = map_t.shape[1]
    return F.normalize(map_t, dim=1).reshape(channels, -1).T


class PixelQueue(nn.Module):
    """A FIFO queue of `size` l2-normalised teacher embeddings of dimension `dim`.

    It starts as random unit vectors (drawn from `seed` if given), as in the public code. The state
    lives in buffers, so it is saved and restored with the module's state_dict.
    """

    def __init__(self, size: int, dim: int, seed: int | None = None, layout: str = "pixels",
                 draw_from: str = "filled", wrap: str = "ring"):
        super().__init__()
        self.layout, self.draw_from, self.wrap = layout, draw_from, wrap
        check_memory(f"the pixel queue of distill.queue_size {size:,} x {dim} features", 2 * size * dim * 4,
                     "lower distill.queue_size")
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        queue = torch.randn(size, dim, generator=generator)
        self.register_buffer("queue", nn.functional.normalize(queue, dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def draw_indices(self, v: int) -> torch.Tensor:
        """`whole`: round(linspace(0, N_q - 1, V)) over the whole queue, the public code's fixed indices.
        `filled`: V evenly spaced rows of the filled part (of the whole queue while nothing is pushed)."""
        if self.draw_from == "whole":
            return torch.linspace(0, self.size - 1, v).round().long().to(self.queue.device)
        n = int(self.filled) or self.size
        return torch.arange(v, device=self.queue.device) * n // v

    def draw(self, v: int) -> torch.Tensor:
        """V embeddings (V, C), a copy: a later push does not change them."""
        return self.queue.index_select(0, self.draw_indices(v))  # half the time of queue[indices] on a CPU

    @torch.no_grad()
    def push(self, map_t: torch.Tensor, k: int, scope: str = "global", generator: torch.Generator | None = None) -> None:
        """Enqueue k random rows of the teacher maps (N, C, H, W); every rank ends with the same queue.

        `global`: k rows per iteration, drawn from the maps gathered over all ranks (rank 0 draws, and
        broadcasts its choice). `rank`: k rows drawn on each rank, then gathered (k x world per iteration).
        Rows are drawn without replacement (all of them if there are fewer than k), with torch's global
        RNG or `generator` (a CPU generator).
        """
        map_t = map_t.detach()
        if scope == "global" and _distributed():
            map_t = _all_gather(map_t)
        rows = queue_rows(map_t, self.layout)
        picked = torch.randperm(rows.shape[0], generator=generator)[:k].to(rows.device)
        if scope == "global" and _distributed():
            dist.broadcast(picked, src=0)
        new = F.normalize(rows[picked], dim=1).to(self.queue)
        if scope == "rank" and _distributed():
            new = _all_gather(new)
        self._write(new)

    def _write(self, new: torch.Tensor) -> None:
        k = new.shape[0]
        if self.wrap == "public":  # a full write at the end, never split over the wrap (public code)
            if int(self.ptr) + k >= self.size:
                self.queue[-k:] = new[-self.size:]
                self.ptr.zero_()
            else:
                self.queue[int(self.ptr):int(self.ptr) + k] = new
                self.ptr.add_(k)
        else:
            rows = (self.ptr + torch.arange(k, device=self.queue.device)) % self.size
            self.queue[rows[-self.size:]] = new[-self.size:]  # if more than fit, the newest win
            self.ptr.copy_((self.ptr + k) % self.size)
        self.filled.copy_((self.filled + k).clamp(max=self.size))
