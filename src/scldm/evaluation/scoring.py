"""Pure scoring functions of the evaluation protocol: feature distances, attribute agreement,
per-speaker retrieval hits and bootstrap confidence intervals over speakers.

Conventions (recorded with every result by `scldm.evaluation.evaluate`):
- distances between a generated face's features a and a target's features b, per image:
  L1 = Σ|a − b|, L2 = ‖a − b‖₂, cosine = 100·(1 − cos(a, b)); on raw features and on
  L2-normalised features (then L2 = √(2·(1 − cos)), and L1 is scale-free);
- every value is a mean over speakers of per-speaker means, so a speaker with many clips counts
  once; its 95 % interval is a percentile bootstrap over speakers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


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


def speaker_means(values: np.ndarray, speakers: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Mean of the finite values of each speaker (speakers with none are dropped)."""
    groups: dict[str, list[float]] = {}
    for v, s in zip(np.asarray(values, float), speakers, strict=True):
        if np.isfinite(v):
            groups.setdefault(s, []).append(float(v))
    ids = sorted(groups)
    return np.array([np.mean(groups[s]) for s in ids]), ids


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
    one pool of everyone. Cosine similarity; ties count against the query. Their mean is
    `scldm.evaluation.metrics.pooled_recall`'s Recall@K; per identity they give a bootstrap CI.
    """
    n = query.shape[0]
    sim = F.normalize(query.double(), dim=-1) @ F.normalize(keys.double(), dim=-1).T
    g = torch.Generator().manual_seed(seed)
    pools = (
        [torch.arange(n)]
        if n <= pool_size
        else [torch.randperm(n, generator=g)[:pool_size] for _ in range(num_pools)]
    )
    hits = {k: np.zeros(n) for k in ks}
    seen = np.zeros(n)
    for idx in pools:
        s = sim[idx][:, idx]
        rank = (s >= s.diagonal()[:, None]).sum(1).numpy()
        seen[idx.numpy()] += 1
        for k in ks:
            hits[k][idx.numpy()] += rank <= k
    with np.errstate(invalid="ignore", divide="ignore"):
        return {k: np.where(seen > 0, hits[k] / seen, np.nan) for k in ks}
