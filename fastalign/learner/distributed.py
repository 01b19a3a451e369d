"""Process-group set-up shared by the learner and the engine.

Under torchrun the world group must exist before the vLLM engine starts (DESIGN.md), so the training
entry point calls `init_distributed()` first. A plain `python -m fastalign.train` becomes a world of one
on loopback, so the same DeepSpeed code path runs everywhere.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_shm_allreduce() -> None:
    """DeepSpeed JIT-compiles a shared-memory allreduce (~60 s cold) at init: useless for one rank, and
    FASTALIGN_SHM_ALLREDUCE=0 keeps gloo's allreduce for short multi-rank jobs (tests)."""
    import importlib

    # `import deepspeed.comm.torch as m` would bind the torch package that deepspeed.comm re-exports
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def init_distributed() -> tuple[int, int]:
    """(rank, world size); gloo on CPU, NCCL on GPU; idempotent.

    Also adopts a process group someone else created (e.g. an engine started first in a library use),
    filling in the launcher variables DeepSpeed insists on.
    """
    # name DeepSpeed's accelerator, instead of letting it warn at import that it fell back to the CPU
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    if dist.is_initialized():
        os.environ.setdefault("RANK", str(dist.get_rank()))
        os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    elif os.environ.get("WORLD_SIZE", "1") == "1":  # not launched by torchrun: a world of one on loopback
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if int(os.environ["WORLD_SIZE"]) == 1 or os.environ.get("FASTALIGN_SHM_ALLREDUCE") == "0":
        _skip_shm_allreduce()
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Tear the process group down (and DeepSpeed's handle on it), so that a later run in the same
    process, e.g. a sweep through the library API, starts from a fresh group."""
    import importlib

    if dist.is_initialized():
        dist.destroy_process_group()
    importlib.import_module("deepspeed.comm.comm").cdb = None
    groups = importlib.import_module("deepspeed.utils.groups")  # DeepSpeed caches its groups here
    groups._WORLD_GROUP = groups._DATA_PARALLEL_GROUP = groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None


def comm_device() -> torch.device:
    """Where a tensor must live to be reduced: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(value: float) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_max(value: float) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0
