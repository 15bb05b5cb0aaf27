"""torch.distributed set-up from torchrun's environment: gloo on CPU, NCCL on GPU."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

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


def _env_int(name: str, default: str, low: int, high: int | None, what: str) -> int:
    """An integer of torchrun's environment, checked: a wrong one is refused in one line before any work."""
    raw = os.environ.get(name, default).strip()
    value = int(raw) if raw.isdigit() else -1
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise RddError(f"{name}={raw!r} is not {what} ({bound}); unset it, or start the run with torchrun")
    return value


DEFAULT_DIST_TIMEOUT = 180  # seconds to wait for the other processes (torch's own default is 30 minutes)


def dist_timeout() -> int:
    """How long a distributed start waits for its peers: $RDD_DIST_TIMEOUT seconds."""
    return _env_int("RDD_DIST_TIMEOUT", str(DEFAULT_DIST_TIMEOUT), 1, 86_400, "a number of seconds")


def _start_process_group(backend: str, world: int, rank: int) -> None:
    """init_process_group within dist_timeout(): peers that never come are one line, not a 30-minute wait.
    Collectives afterwards keep torch's default timeout: the main process may work alone for minutes
    (a grid, a checkpoint) while the others wait."""
    from torch.distributed.constants import default_pg_timeout
    from torch.distributed.distributed_c10d import _set_pg_timeout

    timeout = dist_timeout()
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError, OSError) as e:  # DistStoreError / DistNetworkError are RuntimeErrors
        raise RddError(f"process {rank} of {world} could not reach the others at {os.environ.get('MASTER_ADDR')}:"
                       f"{os.environ.get('MASTER_PORT', '29500')} within {timeout} s ({type(e).__name__}); start every process "
                       "with torchrun, check MASTER_ADDR/MASTER_PORT, or set RDD_DIST_TIMEOUT to wait longer") from None
    _set_pg_timeout(default_pg_timeout)


def world_size() -> int:
    return _env_int("WORLD_SIZE", "1", 1, None, "a process count")


def default_device(local_rank: int = 0) -> torch.device:
    """The one device choice: this process's GPU when there is one, else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed() -> DistContext:
    """One process per device; without torchrun's variables this is a single CPU/GPU process."""
    world = world_size()
    if world > 1 and not dist.is_initialized() and not os.environ.get("MASTER_ADDR", "").strip():
        raise RddError(f"WORLD_SIZE={world} but MASTER_ADDR is not set (or empty); start multi-process runs with "
                       f"torchrun --nproc_per_node={world} -m rdd.cli ..., or unset WORLD_SIZE")
    rank = _env_int("RANK", "0", 0, world - 1, f"a process rank below WORLD_SIZE={world}")
    local_rank = _env_int("LOCAL_RANK", "0", 0, world - 1, f"a local rank below WORLD_SIZE={world}")
    if world > 1:
        _env_int("MASTER_PORT", "29500", 1, 65535, "a TCP port")
        dist_timeout()
    if torch.cuda.is_available() and local_rank >= torch.cuda.device_count():
        raise RddError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                       "start at most one process per GPU (torchrun --nproc_per_node)")
    device = default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        _start_process_group("nccl" if device.type == "cuda" else "gloo", world, rank)
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


def gather_to_main(obj) -> list | None:
    """Every process's `obj`, in rank order, on the main process; None on the others."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Every process takes rank 0's parameters and buffers (what DDP does for the model it wraps)."""
    if dist.is_available() and dist.is_initialized():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def average_batchnorm_stats(module: torch.nn.Module) -> None:
    """Average BatchNorm running statistics over processes, where SyncBatchNorm cannot run (CPU/gloo),
    so that every process holds the same module and the one rank 0 saves is theirs too."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm):
            for stat in (m.running_mean, m.running_var):
                if stat is not None:
                    dist.all_reduce(stat)
                    stat /= dist.get_world_size()
