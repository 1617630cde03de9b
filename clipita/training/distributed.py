"""Negatives across processes: every process's embeddings in one batch, gradients flowing to the local rows.

DDP averages gradients over processes, while the contrastive loss of the global batch needs their sum
(each process contributes only its own rows' part). Scaling the local rows' gradient by the number of
processes makes DDP's average equal the single-process gradient of the global batch; parameters used
directly by the loss (the temperature) get the same gradient on every process, which averaging keeps.
"""

from __future__ import annotations

import torch


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; gradient times `scale` backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def gather_with_local_grad(local: torch.Tensor, accelerator) -> torch.Tensor:
    """Rows of all processes, in process order; this process's rows are `local` itself (with gradient,
    scaled for DDP's averaging), the others are detached copies."""
    world = accelerator.num_processes
    if world == 1:
        return local
    gathered = accelerator.gather(local.detach().contiguous())
    if gathered.shape[0] != world * local.shape[0]:
        raise RuntimeError(
            f"processes hold different batch sizes ({gathered.shape[0]} rows gathered, {local.shape[0]} here); "
            "contrastive batches must be the same size on every process"
        )
    pieces = list(gathered.split(local.shape[0]))
    pieces[accelerator.process_index] = _ScaleGradient.apply(local, float(world))
    return torch.cat(pieces)


def gather_labels(labels: torch.Tensor, accelerator) -> torch.Tensor:
    """Integer labels of all processes, in the same order as `gather_with_local_grad`."""
    return labels if accelerator.num_processes == 1 else accelerator.gather(labels.contiguous())
