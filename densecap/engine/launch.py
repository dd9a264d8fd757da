"""Start training in one process, or in N DDP processes.

* ``torchrun --nproc_per_node N tools/train_net.py ...``: the environment (RANK, WORLD_SIZE,
  MASTER_ADDR, ...) is set by torchrun; :func:`init_distributed_from_env` joins the group.
* ``tools/train_net.py --num-gpus N``: :func:`launch` spawns N local processes itself. On a machine
  without CUDA the processes run on the CPU with the gloo backend (how the tests run it).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed_from_env() -> bool:
    """Join the process group torchrun describes in the environment; False if there is none."""
    from densecap.utils.comm import init_from_env

    return init_from_env()


def _worker(local_rank: int, world_size: int, port: int, fn: Callable, args: Tuple[Any, ...]) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(world_size),
        }
    )
    init_distributed_from_env()
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn: Callable, num_processes: int, args: Tuple[Any, ...] = ()) -> None:
    """Run ``fn(*args)`` in ``num_processes`` processes (1: in this process)."""
    if num_processes <= 1:
        init_distributed_from_env()
        fn(*args)
        return
    port = _free_port()
    mp.start_processes(_worker, nprocs=num_processes, args=(num_processes, port, fn, args), start_method="spawn")
