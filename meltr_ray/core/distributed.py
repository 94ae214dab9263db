"""Rank/world helpers and the collectives MELTR needs. All are no-ops without a process group; none creates one.

Why these exist: DDP averages the *backbone* gradients through hooks on ``backward()``, but the hypergradient is
taken with ``torch.autograd.grad``, which DDP never sees. The official code therefore lets every rank's MELTR
drift apart (reference §8, B-ALL-2). Here MELTR is broadcast from rank 0 at start and its hypergradient is
all-reduced (mean) as one flat vector, so φ stays bit-identical on every rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _flatten(tensors: list) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _unflatten(flat: torch.Tensor, like: list) -> list:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def all_reduce_mean(tensors: list) -> list:
    """Mean of a list of tensors across ranks, as one flat all-reduce (one collective, not one per tensor)."""
    if not is_distributed() or not tensors:
        return list(tensors)
    flat = _flatten([t.detach() for t in tensors]).clone()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return _unflatten(flat / world_size(), tensors)


def all_reduce_mean_differentiable(x: torch.Tensor) -> torch.Tensor:
    """Mean across ranks that autograd differentiates through (and twice: its backward is an all-reduce).

    Used in the global hypergradient mode so that MELTR sees the loss vector of the *global* batch.
    """
    if not is_distributed():
        return x
    import warnings

    from torch.distributed.nn.functional import all_reduce
    # Deprecated in torch 2.13 in favour of _functional_collectives.all_reduce, which has no autograd formula;
    # this one's backward is itself an all-reduce, so it supports the double backward the HVPs need.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed.nn.functional.*deprecated")
        return all_reduce(x, op=dist.ReduceOp.SUM) / world_size()


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from rank ``src`` to every rank (one flat broadcast)."""
    if not is_distributed():
        return
    tensors = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]
    if not tensors:
        return
    flat = _flatten([t.detach() for t in tensors]).clone()
    dist.broadcast(flat, src=src)
    with torch.no_grad():
        for t, value in zip(tensors, _unflatten(flat, tensors)):
            t.copy_(value)


def any_rank(flag: bool, device=None) -> bool:
    """True if ``flag`` is true on any rank: lets every rank skip the same step together (no deadlock)."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
