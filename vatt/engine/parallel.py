"""Data parallelism for training: the model wrapped in DDP or FSDP, and BatchNorm over the global batch.

The official FAC head uses SyncBatchNormalization; torch's SyncBatchNorm is CUDA-only, so
`GlobalBatchNorm1d` does the same on any device (gloo included).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from vatt.distributed import DistEnv, all_reduce_sum_with_grad, get_world_size, is_distributed
from vatt.model.heads import KerasBatchNorm1d


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
        stats = all_reduce_sum_with_grad(torch.cat([xf.sum(0), (xf * xf).sum(0), count]))
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
        # Buffers need no broadcast each forward: the only ones are BatchNorm statistics, which GlobalBatchNorm1d
        # keeps equal. (`forward_sync_buffers` replaces the deprecated `broadcast_buffers`, whose FutureWarning
        # every rank printed; the one sync at init copies what every rank already holds.)
        return DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                                       forward_sync_buffers=False)
    # The model returns views (reshaped text embeddings); the loop never modifies outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for m in list(model.modules()):
        if isinstance(m, nn.ModuleList):
            for layer in m:
                fully_shard(layer)
    fully_shard(model)
    return model
