"""Run by torchrun in test_is_p2p_chunked: IS_P2P with global scope on this rank's quarter of a known batch."""
import sys

import torch
import torch.distributed as dist

from rdd.losses import is_p2p_loss_global

out, block_rows = sys.argv[1], int(sys.argv[2])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
map_s, map_t = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64), torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
per_rank = map_s.shape[0] // world
mine = map_s[rank * per_rank:(rank + 1) * per_rank].clone().requires_grad_(True)
loss = is_p2p_loss_global(mine, map_t[rank * per_rank:(rank + 1) * per_rank], 0.7, block_rows)
loss.backward()
torch.save({"loss": loss.detach(), "grad": mine.grad}, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
