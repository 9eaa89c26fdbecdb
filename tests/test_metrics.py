"""Metrics with hand-checked answers."""

from __future__ import annotations

import math

import numpy as np
import torch

from scldm.evaluation.metrics import (
    bootstrap_ci,
    mean_by_group,
    pearson_r,
    pooled_hits,
    pooled_recall,
    psnr,
    recall_at_k,
    ridge_probe,
    speaker_means,
    summarise,
)


def test_recall_on_a_hand_checked_example():
    keys = torch.eye(3)
    query = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]])  # query 1 prefers key 0
    r = recall_at_k(query, keys, ks=(1, 2))
    assert math.isclose(r["R@1"], 2 / 3) and r["R@2"] == 1.0 and math.isclose(r["mean_rank"], 4 / 3)


def test_pooled_recall_is_perfect_for_identical_and_near_chance_for_random():
    x = torch.randn(300, 16)
    assert pooled_recall(x, x)["R@1"] == 1.0
    r = pooled_recall(torch.randn(300, 16), torch.randn(300, 16), num_pools=50)
    assert r["pool_size"] == 100 and abs(r["R@10"] - 0.10) < 0.04


def test_mean_by_group():
    means, ids = mean_by_group(torch.tensor([[1.0], [3.0], [10.0]]), [7, 7, 2])
    assert ids == [2, 7] and means.squeeze().tolist() == [10.0, 2.0]


def test_ridge_probe_recovers_a_linear_rule():
    x = torch.randn(200, 5)
    y = x @ torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0]) + 3.0
    pred = ridge_probe(x[:150], y[:150], x[150:], alpha=1e-6)
    assert torch.allclose(pred, y[150:], atol=1e-3) and pearson_r(pred, y[150:]) > 0.9999


def test_psnr_known_value():
    a = torch.zeros(2, 3, 4, 4)
    assert math.isclose(psnr(a, a + 0.2), 10 * math.log10(4 / 0.04), rel_tol=1e-5)


def test_pooled_recall_on_a_hand_made_four_identity_example():
    # query i should find key i (the unit vector e_i); query 1 sits closer to key 0, query 3
    # halfway between keys 2 and 3. Ranks 1, 2 (key 0 first), 1, 2 (the tie counts against it)
    keys = torch.eye(4)
    query = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 1.0]])
    hits = pooled_hits(query, keys, ks=(1, 2), pool_size=4)
    assert hits[1].tolist() == [1.0, 0.0, 1.0, 0.0] and hits[2].tolist() == [1.0] * 4
    r = pooled_recall(query, keys, ks=(1, 2), pool_size=4)
    assert r == {"R@1": 0.5, "R@2": 1.0, "mean_rank": 1.5, "pool_size": 4.0}
    assert recall_at_k(query, keys, ks=(1, 2)) == {"R@1": 0.5, "R@2": 1.0, "mean_rank": 1.5}


def test_pooled_recall_is_the_mean_of_pooled_hits_with_one_pool():
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(60, 8, generator=g)
    query = keys + torch.randn(60, 8, generator=g)
    hits = pooled_hits(query, keys, pool_size=100)
    r = pooled_recall(query, keys, pool_size=100)
    assert r["pool_size"] == 60.0
    for k in (1, 5, 10):
        assert math.isclose(hits[k].mean(), r[f"R@{k}"], rel_tol=1e-12)


def test_weighted_mean_by_group():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [float("nan"), 0.0], [10.0, 20.0]])
    groups = ["b", "b", "a", "a"]
    means, ids = mean_by_group(values, groups, weights=torch.tensor([1.0, 3.0, 0.0, 2.0]))
    # b: (1·[1, 2] + 3·[3, 4]) / 4; a: the zero-weight row (even NaN) is left out
    assert ids == ["a", "b"] and means.tolist() == [[10.0, 20.0], [2.5, 3.5]]
    empty, _ = mean_by_group(values[:2], ["x", "x"], weights=torch.tensor([False, False]))
    assert empty.tolist() == [[0.0, 0.0]]  # no weight at all: zeros, not NaN
    assert mean_by_group(values.double(), groups)[0].dtype == torch.float64


def test_speaker_means_drop_unknowns_and_empty_speakers():
    vals, ids = speaker_means(np.array([1.0, 2.0, np.nan, 4.0, np.nan]), ["a", "a", "a", "b", "c"])
    assert ids == ["a", "b"] and vals.tolist() == [1.5, 4.0]


def test_bootstrap_of_a_constant_collapses_to_it():
    assert bootstrap_ci(np.full(7, 0.25), resamples=200, seed=5) == (0.25, 0.25, 0.25)
    s = summarise(np.full(6, 2.0), ["a", "a", "b", "b", "c", "c"])
    assert s["value"] == 2.0 and s["ci"] == [2.0, 2.0] and s["speakers"] == 3
