"""SORSA's orthonormal penalty and its gradient under FSDP (``use_orig_params=True``), for this rank's shards.

There each factor is a 1-D view of this rank's piece of the flattened factor, and the pieces of the ranks of
the shard group, in rank order, make up the whole. The penalty needs whole factors (U^T U sums over all
rows): every factor is gathered, the penalty and its gradient computed on the whole factors by
``penalty_and_grads`` (the same code as without FSDP), and this rank keeps its slice of each gradient.
Memory: the adapters once more, whole.
"""

from __future__ import annotations

import torch

from sorsa_repro.methods.sorsa_penalty import penalty_and_grads, regularized_layers


def _factors(layer):
    """(parameter, full shape, whether the term uses its transpose) for U and Vt of a SORSA layer."""
    return [
        (layer.sorsa_U, (layer.out_features, layer.rank), False),
        (layer.sorsa_Vt, (layer.rank, layer.in_features), True),
    ]


def _gather_whole(param, shape, counts: list[int], rank: int, group) -> torch.Tensor:
    """The whole factor from every rank's piece (pieces padded to the longest for all_gather)."""
    import torch.distributed as dist

    piece = param.detach().reshape(-1).new_zeros(max(counts))
    piece[: counts[rank]] = param.detach().reshape(-1)
    pieces = [torch.empty_like(piece) for _ in range(len(counts))]
    dist.all_gather(pieces, piece, group=group)
    return torch.cat([p[:n] for p, n in zip(pieces, counts, strict=True)]).view(shape)


@torch.no_grad()
def sharded_penalty_and_grads(model, root, device) -> tuple[torch.Tensor, list, list]:
    """(L_orth, this rank's local factors, their gradient slices) with ``root`` the FSDP root module."""
    import torch.distributed as dist

    group = root.process_group
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    factors = [f for layer in regularized_layers(model).values() for f in _factors(layer)]
    local = torch.tensor([p.numel() for p, _, _ in factors], device=device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    sizes = torch.stack(sizes).tolist()  # [rank][factor]
    fulls = [
        _gather_whole(param, shape, [sizes[r][i] for r in range(world)], rank, group)
        for i, (param, shape, _) in enumerate(factors)
    ]
    value, full_grads = penalty_and_grads(fulls, [t for _, _, t in factors])
    params, grads = [], []
    for i, ((param, _, _), grad) in enumerate(zip(factors, full_grads, strict=True)):
        if sizes[rank][i]:
            start = sum(sizes[r][i] for r in range(rank))
            params.append(param)
            grads.append(grad.reshape(-1)[start : start + sizes[rank][i]].to(param.dtype))
    return value, params, grads
