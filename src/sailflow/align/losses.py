"""Contrastive losses over a batch that may be split across ranks.

Both losses gather the other ranks' features with gradient (``all_gather`` whose backward returns
each rank its slice of the summed gradient), so N ranks with B samples each compute exactly the
loss of one batch of N*B, and the gradients match it too. (SAIL's reference computes SigLIP on
local negatives only.)

SigLIP (Zhai et al. 2023, as SAIL): Z = exp(s) * I T^T + b over normalised features,
y = +1 on the diagonal, -1 elsewhere; with extra positive captions E, a second block
Z_e = exp(s) * I E^T + b with the same labels. loss = -mean(logsigmoid(y * [Z, Z_e])).
CLIP (InfoNCE): symmetric cross-entropy of exp(s) * I T^T with the diagonal as targets; extra
captions, if given, are scored as further image->text pairs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every slice
        n = grad.shape[0] // dist.get_world_size()
        r = dist.get_rank()
        return grad[r * n : (r + 1) * n]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, differentiable; ``x`` itself when not distributed."""
    return _AllGather.apply(x) if _distributed() else x


def _world():
    return (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)


class SigLipLoss(nn.Module):
    """Returns a dict: ``loss`` (to minimise) and detached ``positive``, ``negative``, ``extra`` parts.

    Each rank scores its own images (rows) against all ranks' texts (columns). The returned value
    is the global mean over the full [N, N] (or [N, 2N]) matrix on every rank; its backward is that
    of this rank's rows only, so summing the parameter gradients over ranks (the trainer does)
    gives exactly the single-process gradient of the whole batch. ``extra_mask`` ([B] bool, this
    rank's rows) drops extra captions that are missing from the extra block.
    """

    def forward(self, image, text, logit_scale, logit_bias, extra_text=None, extra_mask=None):
        rank, world = _world()
        img = F.normalize(image, dim=-1)
        txt = F.normalize(gather(text), dim=-1)
        n_local, n = img.shape[0], txt.shape[0]
        labels = -torch.ones(n_local, n, device=img.device, dtype=img.dtype)
        labels[torch.arange(n_local), rank * n_local + torch.arange(n_local)] = 1.0
        scale = logit_scale.exp()
        ls = F.logsigmoid(labels * (scale * img @ txt.T + logit_bias))
        total, count = -ls.sum(), ls.numel()
        pos = -ls[labels > 0].sum().detach()
        out = {}
        if extra_text is not None:
            ext = F.normalize(gather(extra_text), dim=-1)
            le = F.logsigmoid(labels * (scale * img @ ext.T + logit_bias))
            if extra_mask is not None:
                le = le[:, gather(extra_mask.to(img.dtype)) > 0]
            total, count = total - le.sum(), count + le.numel()
            out["extra"] = -le.detach().sum()
        count = _sum_over_ranks(torch.tensor(float(count), device=img.device)).detach()
        loss = _sum_over_ranks(total) / count
        out.update(loss=loss, positive=_sum_over_ranks(pos) / (n * n), negative=_sum_over_ranks(-ls.detach().sum() - pos) / (n * n))
        if "extra" in out:
            out["extra"] = _sum_over_ranks(out["extra"]) / (n * n)
        return out


class ClipLoss(nn.Module):
    def forward(self, image, text, logit_scale, logit_bias=None, extra_text=None, extra_mask=None):
        rank, world = _world()
        img_all = F.normalize(gather(image), dim=-1)
        txt_all = F.normalize(gather(text), dim=-1)
        scale = logit_scale.exp()
        n_local = image.shape[0]
        rows = slice(rank * n_local, (rank + 1) * n_local)
        target = torch.arange(rank * n_local, (rank + 1) * n_local, device=image.device)
        li = scale * img_all[rows] @ txt_all.T  # this rank's images against all texts
        lt = scale * txt_all[rows] @ img_all.T
        total = F.cross_entropy(li, target, reduction="sum") + F.cross_entropy(lt, target, reduction="sum")
        terms = 2
        if extra_text is not None:
            ext_all = F.normalize(gather(extra_text), dim=-1)
            total = total + F.cross_entropy(scale * img_all[rows] @ ext_all.T, target, reduction="sum")
            terms = 3
        loss = _sum_over_ranks(total) / (terms * n_local * world)
        return {"loss": loss}


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad  # d(sum_r x_r)/d x_local = 1; each rank back-propagates its own part


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x) if _distributed() else x


LOSSES = {"siglip": SigLipLoss, "clip": ClipLoss}
