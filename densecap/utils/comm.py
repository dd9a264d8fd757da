"""torch.distributed helpers that also work when it is not initialised (single process)."""
from __future__ import annotations

import logging
import os
from typing import Any, List

import torch
import torch.distributed as dist


logger = logging.getLogger(__name__)


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 without it), before or without joining the group."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT, LOCAL_RANK): nccl with CUDA (device LOCAL_RANK), else gloo. False without one."""
    if dist.is_available() and dist.is_initialized():
        return True
    if env_world_size() <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    logger.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_gather(obj: Any) -> List[Any]:
    """Gather a picklable object from every rank (a list of one element without DDP)."""
    if not is_dist() or get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_dict(d: dict, average: bool = True) -> dict:
    """All-reduce a dict of scalar tensors (for logging)."""
    if not is_dist() or get_world_size() == 1:
        return d
    keys = sorted(d)
    vals = torch.stack([d[k].detach().float() for k in keys])
    dist.all_reduce(vals)
    if average:
        vals /= get_world_size()
    return {k: v for k, v in zip(keys, vals)}
