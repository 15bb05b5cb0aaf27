"""Run by torchrun in test_fidelity: each rank pushes its own teacher map once; rank files hold the queue."""
import sys

import torch
import torch.distributed as dist

from rdd.losses import PixelQueue

scope, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(100 + rank)  # ranks draw differently, as under fit()
map_t = torch.randn(4, 6, 3, 3)  # 36 pixels per rank, K = 8
queue = PixelQueue(512, 6, seed=0, layout="flat_view", draw_from="whole", wrap="public")
queue.push(map_t, 8, scope)
torch.save({"queue": queue.queue, "filled": int(queue.filled), "map": map_t}, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
