"""Several GPUs under torchrun: one process per GPU, each training on its slice of every global batch
(DDP averages the gradients); rank 0 alone writes files."""
from __future__ import annotations

import os

import torch


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: str) -> str:
    """Join the process group when launched by torchrun; returns this process's device."""
    import torch.distributed as dist

    _, world, local = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if world > 1 and device.startswith("cuda"):
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean_over_ranks(value: float, device: str) -> float:
    """The mean of a number over all processes (itself in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def replica_divergence(params: list[torch.Tensor], device: str) -> float:
    """Largest difference between any parameter and rank 0's copy, over all ranks (0.0 when DDP kept
    the replicas identical, as it must)."""
    import torch.distributed as dist

    divergence = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        divergence = torch.maximum(divergence, (p.detach() - ref).abs().max().double())
    dist.all_reduce(divergence, op=dist.ReduceOp.MAX)
    return float(divergence)
