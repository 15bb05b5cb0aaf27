"""torch.distributed set-up from torchrun's environment: gloo on CPU, NCCL on GPU."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rdd.errors import RddError


@dataclass
class DistContext:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise RddError(f"WORLD_SIZE={raw!r} is not a process count; unset it, or start the run with torchrun")
    return int(raw)


def require_single_process(command: str) -> None:
    """For the commands that do not split their work over torchrun's processes."""
    world = world_size()
    if world > 1:
        raise RddError(f"rdd {command} runs in a single process; start it without torchrun (WORLD_SIZE={world})")


def default_device(local_rank: int = 0) -> torch.device:
    """The one device choice: this process's GPU when there is one, else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed() -> DistContext:
    """One process per device; without torchrun's variables this is a single CPU/GPU process."""
    world = world_size()
    if world > 1 and not dist.is_initialized() and "MASTER_ADDR" not in os.environ:
        raise RddError(f"WORLD_SIZE={world} but MASTER_ADDR is not set; start multi-process runs with "
                       f"torchrun --nproc_per_node={world} -m rdd.cli ..., or unset WORLD_SIZE")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
