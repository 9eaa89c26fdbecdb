"""Pure metric functions on tensors: retrieval recall in pools of speakers, linear probes, PSNR."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def recall_at_k(
    query: torch.Tensor, keys: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K of query i retrieving key i among all keys, by cosine similarity.

    query, keys: (N, D), row i of each belongs to the same identity. Returns {"R@1": ..., ...}
    as fractions, plus the mean rank (1 = first). Ties count against the query (pessimistic).
    """
    sim = F.normalize(query.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T  # (N, N)
    target = sim.diagonal()[:, None]
    rank = (sim >= target).sum(dim=1)  # 1 + number of keys at least as similar as the true one
    out = {f"R@{k}": (rank <= k).double().mean().item() for k in ks}
    out["mean_rank"] = rank.double().mean().item()
    return out


def pooled_recall(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    pool_size: int = 100,
    ks: Sequence[int] = (1, 5, 10),
    num_pools: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """`recall_at_k` averaged over random pools of `pool_size` identities (all, if fewer).

    Chance R@K is K / pool_size; the pool size is returned with the values.
    """
    n = query.shape[0]
    if n <= pool_size:
        return {**recall_at_k(query, keys, ks), "pool_size": float(n)}
    g = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    for _ in range(num_pools):
        idx = torch.randperm(n, generator=g)[:pool_size]
        for key, value in recall_at_k(query[idx], keys[idx], ks).items():
            totals[key] = totals.get(key, 0.0) + value
    return {**{k: v / num_pools for k, v in totals.items()}, "pool_size": float(pool_size)}


def mean_by_group(values: torch.Tensor, groups: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Average rows of values (N, D) that share a group id: ((G, D), sorted group ids)."""
    ids = sorted(set(groups))
    index = {g: i for i, g in enumerate(ids)}
    gi = torch.tensor([index[g] for g in groups])
    sums = torch.zeros(len(ids), values.shape[1]).index_add_(0, gi, values.float())
    counts = torch.bincount(gi, minlength=len(ids)).clamp_min(1)[:, None]
    return sums / counts, ids


def ridge_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, *, alpha: float = 1.0
) -> torch.Tensor:
    """Closed-form ridge regression (features standardised on train): predictions for test_x.

    train_y: (N,) or (N, K). A linear probe: what a linear read-out of the features can recover.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], 1).double()
    y = train_y.double().reshape(len(train_x), -1)
    reg = alpha * torch.eye(xs.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0  # no penalty on the bias
    w = torch.linalg.solve(xs.T @ xs + reg, xs.T @ y)
    xt = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], 1).double()
    pred = (xt @ w).float()
    return pred.squeeze(-1) if train_y.dim() == 1 else pred


def pearson_r(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two 1-D tensors."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), mean over images."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(4.0 / mse)).mean().item()
