"""Several GPUs under torchrun: one process per GPU, each training on its slice of every global batch;
rank 0 alone writes files.

ddp   every process holds all weights, gradients and AdamW state; DDP averages the gradients.
fsdp  PyTorch's fully_shard (FSDP2): weights, gradients and optimizer state are split over the
      processes (each transformer layer is gathered just before it runs, then freed), so full
      fine-tuning of medium/large fits where one GPU's copy of everything would not (~29 / ~53 GiB
      of fp32 weights + AdamW state). Checkpoints are sharded (checkpoint.save_sharded) and resume
      on any number of processes.
"""
from __future__ import annotations

import contextlib
import os

import torch

PARALLEL = ("ddp", "fsdp")


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


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    import torch.distributed as dist

    if is_distributed():
        dist.barrier()


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of a tensor over all processes (itself in a single process)."""
    import torch.distributed as dist

    if is_distributed():
        t = t.clone()
        dist.all_reduce(t)
    return t


def wrap(step_module: torch.nn.Module, lm: torch.nn.Module, parallel: str, device: str) -> torch.nn.Module:
    """The module the loop calls: itself in one process, DDP-wrapped, or fully sharded (in place).

    FSDP: each transformer layer is one unit (gathered for its forward and backward), the step module
    the root (embeddings, output heads, the text projection). Call before making the optimizer:
    sharding replaces the parameters.
    """
    if not is_distributed():
        return step_module
    if parallel == "ddp":
        # find_unused_parameters: with CFG dropout a batch may use no description at all.
        return torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
            find_unused_parameters=True)
    from torch.distributed.fsdp import fully_shard

    for layer in lm.transformer.layers:
        fully_shard(layer)
    fully_shard(step_module)
    # FSDP makes the first module to run forward the root. Validation runs the LM outside the step
    # module (evaluate_ce), which would make a layer the root before the first training step: settle it.
    step_module._get_fsdp_state()._lazy_init()
    return step_module


def grad_sync(module: torch.nn.Module, enabled: bool):
    """Context for one micro-batch's backward: gradients are averaged across processes only when
    `enabled` (the last micro-batch of a step), not on every micro-batch of gradient accumulation."""
    if hasattr(module, "no_sync"):  # DDP
        return contextlib.nullcontext() if enabled else module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP
        module.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def gathered(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Under FSDP, the root's own weights gathered (for evaluation outside the step module's forward);
    a no-op otherwise. They are freed again by the next backward."""
    if hasattr(module, "unshard"):
        module.unshard()
    return contextlib.nullcontext()


def local(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a possibly distributed one (clip_grad_norm_ over sharded gradients returns a DTensor)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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
