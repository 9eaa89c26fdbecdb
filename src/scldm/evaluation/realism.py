"""Realism metrics: how far a set of faces is from a set of true faces, as distributions.

- `two_sample_test`: a classifier two-sample test (Lopez-Paz & Oquab, "Revisiting Classifier
  Two-Sample Tests", ICLR 2017): a linear classifier (ridge regression on ±1 labels, closed
  form) on standardised pixels, cross-validated; its held-out accuracy is 0.5 when the two
  sets cannot be told apart and 1.0 when they always can.
  With `detail`, the classifier sees only each image minus its box blur (`fine_detail`): the
  edges, eyes and glasses frames, not the colours and layout, so a set of blurred faces whose
  colours are right is still told apart.
- `kid`: Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018), the
  unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / D + 1)³, averaged over random
  subsets as torch-fidelity computes it (subsets of up to 1000, mean and standard deviation).
  One extension: given group ids (speakers), pairs of one group are left out of the within-set
  means, as the pairs i = i are, because a speaker's faces are not independent draws.
- `speaker_halves`: the seeded split of speakers that gives each statistic its floor (true
  faces of one half against true faces of the other).

Pure torch/numpy: the evaluation (`scldm.evaluation.fidelity`) chooses the sets.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# --- KID --------------------------------------------------------------------------------------


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, coef0: float = 1.0
) -> torch.Tensor:
    """k(x, y) = (x·y / D + coef0)^degree for features x (N, D), y (M, D) → (N, M), float64."""
    x, y = x.double(), y.double()
    return (x @ y.T / x.shape[1] + coef0) ** degree


def _codes(groups: Sequence[Hashable] | None, n: int) -> torch.Tensor:
    """Integer codes of group ids; every row its own group when None."""
    if groups is None:
        return torch.arange(n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} rows")
    index: dict[Hashable, int] = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in groups])


def _within_mean(k: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean of k over the pairs of rows of different groups (so never i = i)."""
    pairs = codes[:, None] != codes[None, :]
    return (k * pairs).sum() / pairs.sum()


def _mmd2(kxx, kyy, kxy, gx: torch.Tensor, gy: torch.Tensor) -> float:
    # the pairs k(x_i, x_i) are left out, which makes the estimate unbiased; so are pairs of
    # one group (a speaker's faces are not independent draws, and their likeness would count
    # as a difference from the other set)
    return float(_within_mean(kxx, gx) + _within_mean(kyy, gy) - 2 * kxy.mean())


def _check_sides(gx: torch.Tensor, gy: torch.Tensor) -> bool:
    return len(set(gx.tolist())) >= 2 and len(set(gy.tolist())) >= 2


def mmd2_unbiased(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_groups: Sequence[Hashable] | None = None,
    y_groups: Sequence[Hashable] | None = None,
    degree: int = 3,
) -> float:
    """Unbiased estimate of MMD² between the distributions of x (N, D) and y (M, D) with the
    polynomial kernel (Gretton et al. 2012, eq. 3). It can be negative: its expectation is 0
    when the distributions are equal. With group ids (e.g. speakers), the within-set averages
    leave out the pairs of one group as well as i = j; each side needs 2 groups."""
    gx, gy = _codes(x_groups, len(x)), _codes(y_groups, len(y))
    if not _check_sides(gx, gy):
        raise ValueError("MMD² needs at least 2 samples (groups) a side")
    k = polynomial_kernel(torch.cat([x, y]), torch.cat([x, y]), degree=degree)
    m = len(x)
    return _mmd2(k[:m, :m], k[m:, m:], k[:m, m:], gx, gy)


def kid(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_groups: Sequence[Hashable] | None = None,
    y_groups: Sequence[Hashable] | None = None,
    subset_size: int = 1000,
    num_subsets: int = 100,
    degree: int = 3,
    seed: int = 0,
) -> dict[str, Any] | None:
    """KID between features x (N, D) and y (M, D): `mmd2_unbiased` of `num_subsets` random
    pairs of subsets of m = min(subset_size, N, M) rows each (drawn without replacement),
    torch-fidelity's convention. Returns {"value": mean, "std": standard deviation over the
    subsets, "subset_size", "num_subsets", "n": [N, M]}; None when a side has fewer than 2
    rows (groups). When m equals N and M every subset is the whole set: one subset is drawn
    and std is 0, which is no uncertainty."""
    gx, gy = _codes(x_groups, len(x)), _codes(y_groups, len(y))
    if not _check_sides(gx, gy):
        return None
    m = min(subset_size, len(x), len(y))
    if m == len(x) == len(y):
        num_subsets = 1  # every subset would be the whole of both sets
    rng = np.random.default_rng(seed)
    z = torch.cat([x, y])
    # one kernel matrix over both sets, indexed per subset, when it is small enough
    full = polynomial_kernel(z, z, degree=degree) if len(z) <= 8192 else None
    values = []
    for _ in range(num_subsets):
        i = torch.from_numpy(rng.choice(len(x), m, replace=False))
        j = torch.from_numpy(rng.choice(len(y), m, replace=False))
        if not _check_sides(gx[i], gy[j]):
            continue
        sub = torch.cat([i, j + len(x)])
        k = (
            full[sub][:, sub]
            if full is not None
            else polynomial_kernel(z[sub], z[sub], degree=degree)
        )
        values.append(_mmd2(k[:m, :m], k[m:, m:], k[:m, m:], gx[i], gy[j]))
    if not values:
        return None
    return {
        "value": float(np.mean(values)),
        "std": float(np.std(values)),
        "subset_size": m,
        "num_subsets": len(values),
        "n": [len(x), len(y)],
    }


# --- Classifier two-sample test ---------------------------------------------------------------


def wilson_interval(hits: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion hits / n (Wilson 1927): (low, high)."""
    if n == 0:
        return float("nan"), float("nan")
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _ridge_scores(
    train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Ridge regression of ±1 labels on standardised features, solved in the dual (N ≪ D):
    w = Xᵀ(XXᵀ + αI)⁻¹(y − ȳ). Features constant on the training rows are dropped (a scale of
    1/std would blow them up on the held-out rows)."""
    mean, std = train.mean(0), train.std(0, correction=0)
    scale = torch.where(std > 1e-6, 1 / std.clamp_min(1e-6), torch.zeros_like(std))
    xs, xt = (train - mean) * scale, (test - mean) * scale  # (N, D), (M, D)
    bias = labels.mean()
    gram = xs @ xs.T + alpha * torch.eye(len(xs), dtype=xs.dtype)
    dual = torch.linalg.solve(gram, labels - bias)
    return xt @ (xs.T @ dual) + bias


def _deal(codes: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """The fold of each row: its group's place in a seeded shuffle of the groups, modulo k, so
    a group's rows share a fold."""
    ids = codes.unique()  # sorted
    fold_of = torch.empty(len(ids), dtype=torch.long)
    fold_of[torch.randperm(len(ids), generator=g)] = torch.arange(len(ids)) % k
    return fold_of[torch.searchsorted(ids, codes)]


def fine_detail(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """images (B, C, H, W) minus their `kernel` × `kernel` box blur (the mean over the part of
    the window inside the image, so a constant image has no detail at all)."""
    blur = F.avg_pool2d(images, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return images - blur


def detail_kernel(size: int) -> int:
    """The odd box-blur width `fine_detail` uses for faces of `size` px: about a thirteenth of
    the face (5 px at 64 px, 17 px at 224 px; at least 3)."""
    return max(3, 2 * (size // 26) + 1)


def two_sample_test(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_groups: Sequence[Hashable] | None = None,
    y_groups: Sequence[Hashable] | None = None,
    folds: int = 5,
    alpha: float = 1.0,
    size: int | None = None,
    detail: int | None = None,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """Classifier two-sample test between images x (N, 3, H, W) and y (M, 3, H, W).

    The larger set is subsampled to the size n of the smaller (balanced classes), the 2n images
    are flattened (after an antialiased resize to `size` px when given, and with `detail` only
    their `fine_detail` at that box-blur width) and split into `folds` stratified folds
    (seeded), grouped when group ids are given: all images of a group (a speaker) in one fold,
    so that no classifier is tested on a person it was trained on. A
    ridge classifier (`alpha`, on features standardised on the training folds) predicts each
    held-out image once. Returns {"accuracy": held-out accuracy, "ci": Wilson interval over the
    2n held-out predictions, "n": n per set, "folds", "alpha", "size", "detail"}; None when a
    set has fewer than 2 images (groups). 0.5 = indistinguishable, 1.0 = always told apart;
    below 0.5 is chance too.
    """
    n = min(len(x), len(y))
    g = torch.Generator().manual_seed(seed)
    keep_x, keep_y = (
        torch.randperm(len(x), generator=g)[:n],
        torch.randperm(len(y), generator=g)[:n],
    )
    gx, gy = _codes(x_groups, len(x))[keep_x], _codes(y_groups, len(y))[keep_y]
    k = min(folds, len(gx.unique()), len(gy.unique()))
    if k < 2:
        return None
    x, y = x[keep_x].double(), y[keep_y].double()
    if size is not None:
        x, y = (
            F.interpolate(v, size=(size, size), mode="bilinear", antialias=True) for v in (x, y)
        )
    if detail is not None:
        x, y = fine_detail(x, detail), fine_detail(y, detail)
    data = torch.cat([x, y]).flatten(1)  # (2n, D)
    labels = torch.cat([torch.ones(n), -torch.ones(n)]).double()
    fold = torch.cat([_deal(gx, k, g), _deal(gy, k, g)])  # stratified: each class dealt apart
    correct = torch.zeros(2 * n, dtype=torch.bool)
    for f in range(k):
        test = fold == f
        scores = _ridge_scores(data[~test], labels[~test], data[test], alpha)
        correct[test] = torch.sign(scores) == labels[test]
    hits = int(correct.sum())
    low, high = wilson_interval(hits, 2 * n, level=level)
    return {
        "accuracy": hits / (2 * n),
        "ci": [low, high],
        "n": n,
        "folds": k,
        "alpha": alpha,
        "size": size,
        "detail": detail,
    }


# --- The floor's split ------------------------------------------------------------------------


def speaker_halves(speakers: Sequence[Hashable], *, seed: int = 0) -> tuple[set, set]:
    """Two disjoint halves (S1, S2) of the distinct speakers, by a seeded shuffle of their
    sorted ids; S1 has the smaller half when the count is odd."""
    ids = sorted(set(speakers))
    order = np.random.default_rng(seed).permutation(len(ids))
    half = len(ids) // 2
    return {ids[i] for i in order[:half]}, {ids[i] for i in order[half:]}
