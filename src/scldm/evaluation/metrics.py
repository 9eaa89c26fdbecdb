"""Pure metric functions, one home for each: retrieval in pools of identities, per-group means,
feature distances, attribute agreement, bootstrap intervals over speakers, linear probes, PSNR.

Conventions (recorded with every result by `scldm.evaluation.evaluate`, after the paper's
protocol):
- retrieval: row i of the queries and of the keys is the same identity (a speaker); query i
  ranks every key of its pool by cosine similarity (in float64), and ties count against it
  (pessimistic). Recall@K is the fraction with the true key in the top K, in pools of
  `pool_size` identities: 20 random pools, or one pool of everyone when there are fewer, so
  chance R@K = K / pool size. `pooled_hits` gives the per-identity hit rates (for a bootstrap
  over speakers); `pooled_recall` the per-pool average, from the same ranks;
- distances between a generated face's features a and a target's features b, per image:
  L1 = Σ|a − b|, L2 = ‖a − b‖₂, cosine = 100·(1 − cos(a, b)); on raw features and on
  L2-normalised features (then L2 = √(2·(1 − cos)), and L1 is scale-free);
- every value is a mean over speakers of per-speaker means (`mean_by_group`), so a speaker with
  many clips counts once; its 95 % interval is a percentile bootstrap over speakers;
- diversity: the mean pairwise 100·(1 − cos) between the K faces made for one clip
  (`pairwise_diversity`), on L2-normalised features;
- a difference between two models on the same clips is bootstrapped over the same speakers
  (`paired_bootstrap`: each resample takes both models' values of the speakers it draws).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# --- Retrieval --------------------------------------------------------------------------------


def _pools(n: int, pool_size: int, num_pools: int, seed: int) -> list[torch.Tensor]:
    """Indices of each pool: one of everyone when n ≤ pool_size, else `num_pools` seeded random
    draws of `pool_size` identities without replacement."""
    if n <= pool_size:
        return [torch.arange(n)]
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[:pool_size] for _ in range(num_pools)]


def _pool_ranks(
    query: torch.Tensor, keys: torch.Tensor, *, pool_size: int, num_pools: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(pool indices, rank of the true key for each query of the pool; 1 = first) per pool.

    The one ranking of this module: cosine similarity in float64, and a rank of 1 + the number
    of other keys at least as similar as the true one, so ties count against the query.
    """
    sim = F.normalize(query.double(), dim=-1) @ F.normalize(keys.double(), dim=-1).T
    for idx in _pools(query.shape[0], pool_size, num_pools, seed):
        s = sim[idx][:, idx]
        yield idx, (s >= s.diagonal()[:, None]).sum(1)


def _recall(rank: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    out = {f"R@{k}": (rank <= k).double().mean().item() for k in ks}
    out["mean_rank"] = rank.double().mean().item()
    return out


def recall_at_k(
    query: torch.Tensor, keys: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K of query i retrieving key i among all keys, by cosine similarity.

    query, keys: (N, D), row i of each belongs to the same identity. Returns {"R@1": ..., ...}
    as fractions, plus the mean rank (1 = first). Ties count against the query (pessimistic).
    """
    n = query.shape[0]
    ((_, rank),) = _pool_ranks(query, keys, pool_size=n, num_pools=1, seed=0)
    return _recall(rank, ks)


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
    totals: dict[str, float] = {}
    pools = 0
    for _, rank in _pool_ranks(query, keys, pool_size=pool_size, num_pools=num_pools, seed=seed):
        pools += 1
        for key, value in _recall(rank, ks).items():
            totals[key] = totals.get(key, 0.0) + value
    size = min(query.shape[0], pool_size)
    return {**{k: v / pools for k, v in totals.items()}, "pool_size": float(size)}


def pooled_hits(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    ks: Sequence[int] = (1, 5, 10),
    pool_size: int = 100,
    num_pools: int = 20,
    seed: int = 0,
) -> dict[int, np.ndarray]:
    """Per-identity retrieval hit rates in random pools: {k: (N,) fraction of the pools that
    contained identity i in which key i ranked within the top k for query i}.

    query, keys: (N, D), row i of each the same identity (a speaker). With N ≤ pool_size there is
    one pool of everyone, and their mean is `pooled_recall`'s Recall@K (with several pools the
    two weight identities slightly differently); per identity they give a bootstrap CI.
    """
    n = query.shape[0]
    hits = {k: np.zeros(n) for k in ks}
    seen = np.zeros(n)
    for idx, rank in _pool_ranks(query, keys, pool_size=pool_size, num_pools=num_pools, seed=seed):
        i, r = idx.numpy(), rank.numpy()
        seen[i] += 1
        for k in ks:
            hits[k][i] += r <= k
    with np.errstate(invalid="ignore", divide="ignore"):
        return {k: np.where(seen > 0, hits[k] / seen, np.nan) for k in ks}


# --- Per-group means --------------------------------------------------------------------------


def mean_by_group(
    values: torch.Tensor, groups: Sequence[Hashable], weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, list]:
    """Weighted mean of the rows of values (N, D) that share a group id: ((G, D), sorted ids).

    The one per-speaker mean: Σ w·v / Σ w per group, summed in row order, in the values' float
    precision (at least float32). weights (N,) default to 1; a row of weight 0 is left out
    (even when its values are not finite), and a group whose weights sum to 0 gets zeros.
    """
    if len(groups) != len(values):
        raise ValueError(f"{len(groups)} group ids for {len(values)} rows")
    ids = sorted(set(groups))
    index = {g: i for i, g in enumerate(ids)}
    gi = torch.tensor([index[g] for g in groups], dtype=torch.long)
    dtype = torch.promote_types(values.dtype, torch.float32)
    x = values.to(dtype)
    w = torch.ones(len(x), dtype=dtype) if weights is None else weights.to(dtype)
    rows = torch.where(w[:, None] != 0, x * w[:, None], 0.0)
    sums = torch.zeros(len(ids), x.shape[1], dtype=dtype).index_add_(0, gi, rows)
    counts = torch.zeros(len(ids), dtype=dtype).index_add_(0, gi, w)
    return sums / torch.where(counts != 0, counts, 1.0)[:, None], ids


def speaker_means(values: np.ndarray, speakers: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Mean of the finite values of each speaker (speakers with none are dropped): numpy in and
    out, by `mean_by_group`."""
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    means, ids = mean_by_group(
        torch.from_numpy(np.where(ok, v, 0.0))[:, None], list(speakers), torch.from_numpy(ok)
    )
    found = {s for s, o in zip(speakers, ok.tolist(), strict=True) if o}
    keep = [i for i, s in enumerate(ids) if s in found]
    return means[keep, 0].numpy(), [ids[i] for i in keep]


# --- Distances and attributes -----------------------------------------------------------------


def feature_distances(
    a: torch.Tensor, b: torch.Tensor, *, normalise: bool
) -> dict[str, torch.Tensor]:
    """Per-row distances between features a and b (N, D): {"l1", "l2", "cos"} each (N,).

    cos is reported as 100·(1 − cosine similarity): 0 for identical directions, 100 for
    orthogonal features, 200 for opposite ones.
    """
    a, b = a.double(), b.double()
    if normalise:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    diff = a - b
    cos = F.cosine_similarity(a, b, dim=-1)
    return {"l1": diff.abs().sum(-1), "l2": diff.norm(dim=-1), "cos": 100 * (1 - cos)}


def gender_hits(pred: Sequence[str | None], true: Sequence[str | None]) -> np.ndarray:
    """1.0 where the predicted gender equals the target, 0.0 where not, NaN where either is
    unknown (no face found, or no label): NaNs are counted and left out, never guessed."""
    return np.array(
        [
            np.nan if p is None or t is None else float(p == t)
            for p, t in zip(pred, true, strict=True)
        ]
    )


def age_errors(pred: Sequence[float | None], true: Sequence[float | None]) -> np.ndarray:
    """|predicted − true age| in years, NaN where either is unknown."""
    return np.array(
        [
            np.nan if p is None or t is None else abs(float(p) - float(t))
            for p, t in zip(pred, true, strict=True)
        ]
    )


def pairwise_diversity(features: torch.Tensor, found: torch.Tensor | None = None) -> np.ndarray:
    """Mean pairwise cosine distance 100·(1 − cos(a, b)) between the K faces of each item.

    features: (N, K, D), the K faces of item i in row i; found: (N, K) bool, faces a detector
    missed are left out. Returns (N,): the mean over the found pairs, NaN where fewer than two
    faces were found. 0 when an item's faces are identical (up to scale).
    """
    f = F.normalize(features.double(), dim=-1)  # (N, K, D)
    ok = torch.ones(f.shape[:2], dtype=torch.bool) if found is None else found.bool()
    dist = 100 * (1 - f @ f.transpose(1, 2))  # (N, K, K)
    same = (f[:, :, None] == f[:, None, :]).all(-1)  # identical faces: exactly 0, not ~1e-14
    dist = torch.where(same, 0.0, dist)
    k = f.shape[1]
    pair = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)  # each pair once
    use = pair & ok[:, :, None] & ok[:, None, :]  # (N, K, K)
    total = torch.where(use, dist, 0.0).sum((1, 2))
    count = use.sum((1, 2))
    out = torch.where(count > 0, total / count.clamp_min(1), torch.nan)
    return out.clamp_min(0.0).numpy()  # rounding can dip a near-identical pair below 0


# --- Aggregation over speakers ----------------------------------------------------------------


def bootstrap_ci(
    per_speaker: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-speaker values and its percentile bootstrap interval
    (speakers resampled with replacement). NaNs everywhere for an empty input."""
    x = np.asarray(per_speaker, float)
    if x.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(low), float(high)


def summarise(
    values: np.ndarray, speakers: Sequence[str], *, resamples: int = 1000, seed: int = 0
) -> dict[str, float | int | list[float]]:
    """{"value", "ci": [low, high], "speakers", "items", "missing"} of per-item values."""
    values = np.asarray(values, float)
    per_speaker, ids = speaker_means(values, speakers)
    mean, low, high = bootstrap_ci(per_speaker, resamples=resamples, seed=seed)
    return {
        "value": mean,
        "ci": [low, high],
        "speakers": len(ids),
        "items": int(np.isfinite(values).sum()),
        "missing": int((~np.isfinite(values)).sum()),
    }


def paired_bootstrap(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int | list[float]]:
    """The mean over speakers of a − b and its paired percentile bootstrap interval.

    a, b: per-speaker values ({speaker: value}) of two models on the same clips. Only speakers
    with a finite value in both count; each resample draws speakers with replacement and takes
    both models' values of the same speakers, so what the two share (a hard speaker) cancels.
    Returns {"value", "ci": [low, high], "speakers"}; NaNs when no speaker is shared.
    """
    shared = sorted(s for s in a.keys() & b.keys() if np.isfinite(a[s]) and np.isfinite(b[s]))
    diff = np.array([a[s] - b[s] for s in shared], float)
    mean, low, high = bootstrap_ci(diff, resamples=resamples, level=level, seed=seed)
    return {"value": mean, "ci": [low, high], "speakers": len(shared)}


# --- Probes and reconstruction ----------------------------------------------------------------


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
