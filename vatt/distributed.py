"""Process groups and collectives: joining torchrun's group, barriers, reductions and gathers.

`torchrun` sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; without them the run is one
process and every helper here is the identity (no communication). Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sends each rank the gradient of its own slice.

    Every rank's loss uses the gathered tensor, so the gradient of the sum of all ranks' losses
    w.r.t. rank i's slice is the sum over ranks of the incoming gradients at that slice. The
    backward all-reduces the full gradient and slices it. A reduce-scatter would move less data,
    but gloo lacks it, and the gathered embeddings are small ([B_all, D]).
    """

    @staticmethod
    def forward(ctx, x):
        ctx.local_rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_all):
        grad_all = grad_all.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad_all, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_rows
        return grad_all[start:start + ctx.local_rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` [B, ...] from all ranks in rank order -> [world_size·B, ...], differentiably.

    Every rank must pass the same shape. Identity when `torch.distributed` is not initialised.
    In backward, rank i receives d(Σ_r loss_r)/d x_i: the sum over ranks of the per-rank losses.
    DDP then averages parameter gradients over ranks, which yields the gradient of mean_r loss_r.
    """
    if not is_distributed() or get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


class _AllReduceSumWithGrad(torch.autograd.Function):
    # d(sum over ranks)/d(local) is the identity for every rank's copy, so backward all-reduces the grads.
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks whose backward sums the gradients over ranks too (a copy on one process)."""
    if not is_distributed() or get_world_size() == 1:
        return x.clone()
    return _AllReduceSumWithGrad.apply(x)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_process_group: bool = False  # this call created it, so it also tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one, and pick this rank's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but torch sees no CUDA device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = world_size > 1 and not is_distributed()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    torch_device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    return DistEnv(get_rank(), local_rank, get_world_size(), torch_device, owns)


def shutdown_distributed(env: DistEnv) -> None:
    """Leave the process group `init_distributed` created, every rank together."""
    if env.owns_process_group and is_distributed():
        # A rank that tears its group down while another still talks to it can abort at exit ("terminate called
        # without an active exception"), seen with gloo under load, so the ranks line up first -- unless this
        # rank is leaving on an exception, when the others may never reach the barrier.
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum / max / mean of a tensor over ranks (a copy; the identity on one process)."""
    x = x.clone()
    if is_distributed():
        if op == "mean":
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            x /= get_world_size()
        else:
            dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return x
