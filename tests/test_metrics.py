"""Metrics with hand-checked answers."""

from __future__ import annotations

import math

import torch

from scldm.evaluation.metrics import (
    mean_by_group,
    pearson_r,
    pooled_recall,
    psnr,
    recall_at_k,
    ridge_probe,
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
