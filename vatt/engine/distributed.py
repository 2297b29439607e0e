"""Process-group setup, cross-rank BatchNorm and model wrapping (DDP or FSDP) for pre-training.

`torchrun` sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; without them the run is one
process and nothing here communicates. Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vatt.distributed import get_rank, get_world_size, is_distributed
from vatt.model.heads import KerasBatchNorm1d


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
    if env.owns_process_group and is_distributed():
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


# ---------------------------------------------------------------------------------------------------
# Cross-rank BatchNorm: the official head uses SyncBatchNormalization; torch's SyncBatchNorm is CUDA-only.
# ---------------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
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


class GlobalBatchNorm1d(KerasBatchNorm1d):
    """BatchNorm1d whose training statistics cover the batch of every rank, on any device (gloo included).

    One all-reduce per call of [Σx, Σx², n]. Equals `KerasBatchNorm1d` on one process and on the
    concatenated global batch; the moving variance uses the biased global variance, as Keras'
    SyncBatchNormalization does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed() and get_world_size() > 1):
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"GlobalBatchNorm1d expects [B, C], got shape {tuple(x.shape)}")
        xf = x.float()
        count = torch.full((1,), xf.shape[0], dtype=xf.dtype, device=xf.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum(0), (xf * xf).sum(0), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            self.update_moving_statistics(mean.detach(), var.detach())
        return self.normalize(xf, mean, var).to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d by a GlobalBatchNorm1d with the same parameters and buffers (in place)."""
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm1d, KerasBatchNorm1d):
            new = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, device=child.weight.device if child.affine else None)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


# ---------------------------------------------------------------------------------------------------
# Wrapping
# ---------------------------------------------------------------------------------------------------
def wrap_model(model: nn.Module, parallel: str, env: DistEnv) -> nn.Module:
    """DDP or FSDP (fully_shard) around `model` when there are several ranks; the model itself otherwise.

    FSDP shards each Transformer layer (every element of an nn.ModuleList) and then the rest of the model.
    """
    if env.world_size == 1:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        # Buffers need no broadcast each forward: the only ones are BatchNorm statistics, which GlobalBatchNorm1d
        # keeps equal. (`forward_sync_buffers` replaces the deprecated `broadcast_buffers`, whose FutureWarning
        # every rank printed; the one sync at init copies what every rank already holds.)
        return DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                                       forward_sync_buffers=False)
    import warnings

    from torch.distributed.fsdp import fully_shard
    # The model returns views (reshaped text embeddings); the loop never modifies outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for m in list(model.modules()):
        if isinstance(m, nn.ModuleList):
            for layer in m:
                fully_shard(layer)
    fully_shard(model)
    return model
