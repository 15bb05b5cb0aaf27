"""FIFO memory of teacher pixel embeddings for M_P2P (paper eq. 8-9)."""

import torch
import torch.distributed as dist
from torch import nn

from rdd.losses.pixels import unit_pixels


class PixelQueue(nn.Module):
    """A FIFO queue of `size` l2-normalised teacher pixel embeddings of dimension `dim`.

    As in the public code, it starts as random unit vectors (drawn from `seed` if given) and
    `draw` takes fixed evenly spaced entries. The state lives in buffers, so it is saved and
    restored with the module's state_dict.
    """

    def __init__(self, size: int, dim: int, seed: int | None = None):
        super().__init__()
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        queue = torch.randn(size, dim, generator=generator)
        self.register_buffer("queue", nn.functional.normalize(queue, dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def draw(self, v: int) -> torch.Tensor:
        """V embeddings (V, C) at evenly spaced indices of the filled part.

        While nothing has been pushed yet, of the whole initial random queue.
        """
        n = int(self.filled) or self.size
        return self.queue[torch.arange(v, device=self.queue.device) * n // v]

    @torch.no_grad()
    def push(self, map_t: torch.Tensor, k: int, generator: torch.Generator | None = None) -> None:
        """Enqueue k random pixels of the teacher maps (N, C, H, W), gathered over ranks under DDP.

        Pixels are drawn without replacement (all of them if the batch has fewer than k), uniformly
        over all N*H*W pixels, with torch's global RNG or `generator` (a CPU generator). Ranks are
        concatenated in rank order, so every rank ends with the same queue.
        """
        pixels = unit_pixels(map_t.detach()).flatten(0, 1)
        picked = torch.randperm(pixels.shape[0], generator=generator)[:k].to(pixels.device)
        new = pixels[picked].to(self.queue)
        if dist.is_available() and dist.is_initialized():
            gathered = [torch.empty_like(new) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, new)
            new = torch.cat(gathered)
        rows = (self.ptr + torch.arange(new.shape[0], device=self.queue.device)) % self.size
        self.queue[rows[-self.size:]] = new[-self.size:]  # if more than fit, the newest win
        self.ptr.copy_((self.ptr + new.shape[0]) % self.size)
        self.filled.copy_((self.filled + new.shape[0]).clamp(max=self.size))
