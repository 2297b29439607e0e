"""Small `torch.distributed` helpers; each is a no-op on a single process."""
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
