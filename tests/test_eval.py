"""`tlbench eval`: the linear probe against scikit-learn, k-NN, few-shot episodes (paired between
backbones), one feature extraction for all three protocols, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _blobs(n: int, dim: int, classes: int, seed: int, spread: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes: a problem where regularisation matters."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, dim))
    y = np.arange(n) % classes
    return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float64), y


def test_linear_probe_matches_scikit_learn() -> None:
    """Same objective (C = 1 / (l2 n)), same data: accuracy within 0.5 points, weights close."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    from tlbench.eval.linear import accuracy, fit

    x, y = _blobs(600, 16, 4, seed=0)
    xv, yv = _blobs(2000, 16, 4, seed=1)
    for l2 in (1e-3, 1e-1):
        ours = fit(torch.from_numpy(x), torch.from_numpy(y), 4, l2, iterations=1000)
        ref = sklearn.LogisticRegression(C=1 / (l2 * len(y)), max_iter=10_000, tol=1e-10).fit(x, y)
        ours_acc = accuracy(ours, torch.from_numpy(xv), torch.from_numpy(yv))
        assert abs(ours_acc - ref.score(xv, yv)) <= 0.005
        # multinomial logits are defined up to a per-row constant: compare centred weights
        w = ours.weight.numpy().T
        assert np.allclose(w - w.mean(0), ref.coef_ - ref.coef_.mean(0), atol=2e-3)


def test_linear_search_chooses_on_the_selection_split() -> None:
    from tlbench.eval.linear import COARSE, search

    def t(a: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(a[0]).float(), torch.from_numpy(a[1])

    best, grid, _ = search(t(_blobs(200, 32, 4, 0, spread=4)), t(_blobs(200, 32, 4, 1, spread=4)), 4)
    tried = {g["l2"] for g in grid}
    assert set(COARSE) <= tried and len(tried) > len(COARSE)  # coarse, then fine around the best
    top = max(g["select_top1"] for g in grid)
    assert best == max(g["l2"] for g in grid if g["select_top1"] == top)


def test_knn_votes_weighted_and_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Votes are exp(sim / 0.07) of the k nearest; chunking changes nothing."""
    from tlbench.eval import knn

    g = torch.Generator().manual_seed(0)
    bank = knn.normalised(torch.randn(50, 8, generator=g))
    labels = torch.arange(50) % 3
    queries = knn.normalised(torch.randn(20, 8, generator=g))
    whole = knn.knn_votes((bank, labels), queries, 3, (1, 10))
    sim = queries @ bank.T
    top = sim.topk(10, dim=1)
    expected = torch.zeros(20, 3).scatter_add_(1, labels[top.indices], (top.values / 0.07).exp())
    assert torch.allclose(whole[10], expected, rtol=1e-5)
    assert torch.equal(whole[1].argmax(1), labels[sim.argmax(1)])
    monkeypatch.setattr(knn, "CHUNK_ELEMENTS", 7 * 50)  # 7 queries at a time
    assert torch.allclose(knn.knn_votes((bank, labels), queries, 3, (1, 10))[10], whole[10])
