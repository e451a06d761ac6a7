"""Weighted k-NN on frozen features, as DINO and DINOv2 evaluate them (`dinov2/eval/knn.py`).

Features are L2-normalised; a query's k most cosine-similar training images vote for their classes
with weight exp(similarity / 0.07). k is chosen from {10, 20, 100, 200} (those not above the bank's
size) on the selection split, with the training images without it as the bank; the chosen k is then
scored once on validation with the whole training split as the bank. Queries go in chunks of at
most `CHUNK_ELEMENTS` similarities, so 50,000 x 50,000 images run in bounded memory.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
CHUNK_ELEMENTS = 2**25
"""Similarities held at once (queries x bank): 128 MiB of float32."""


def normalised(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


@torch.no_grad()
def knn_votes(
    bank: tuple[Tensor, Tensor], queries: Tensor, num_classes: int, ks: tuple[int, ...]
) -> dict[int, Tensor]:
    """Each k's class scores (queries x classes) from the weighted votes of the k nearest bank images.

    Args:
        bank: L2-normalised bank features and their labels.
        queries: L2-normalised query features.
        num_classes: Number of classes.
        ks: The k values (each at most the bank size).
    """
    feats, labels = bank
    kmax = max(ks)
    rows = max(1, CHUNK_ELEMENTS // max(len(feats), 1))
    out = {k: torch.empty(len(queries), num_classes, device=queries.device) for k in ks}
    for lo in range(0, len(queries), rows):
        sim, idx = (queries[lo : lo + rows] @ feats.T).topk(kmax, dim=1)  # sorted, most similar first
        weight, voted = (sim / TEMPERATURE).exp(), labels[idx]
        for k in ks:  # the first k neighbours' votes, summed per class
            scores = torch.zeros(len(sim), num_classes, device=queries.device)
            out[k][lo : lo + rows] = scores.scatter_add_(1, voted[:, :k], weight[:, :k])
    return out


def knn_probe(
    feats: dict[str, tuple[Tensor, Tensor]], classes: list[str], device: torch.device
) -> dict[str, Any]:
    """The whole protocol on `feats` (`fit`, `select`, `train`, `val`); the result record."""
    from tlbench.eval.linear import scores

    start = time.perf_counter()
    on = {k: (normalised(x).to(device), y.to(device)) for k, (x, y) in feats.items()}
    ks = tuple(k for k in KS if k <= len(on["fit"][1])) or (len(on["fit"][1]),)
    votes = knn_votes(on["fit"], on["select"][0], len(classes), ks)
    y_select = on["select"][1]
    grid = [{"k": k, "select_top1": float((votes[k].argmax(1) == y_select).float().mean())} for k in ks]
    top = max(g["select_top1"] for g in grid)
    best = min(int(g["k"]) for g in grid if g["select_top1"] == top)  # ties: the fewest neighbours
    k = min(best, len(on["train"][1]))
    logits = knn_votes(on["train"], on["val"][0], len(classes), (k,))[k]
    return {
        "k": k,
        "temperature": TEMPERATURE,
        "grid": grid,
        **scores(logits, on["val"][1], classes),
        "seconds": round(time.perf_counter() - start, 3),
        "interval": "95 % percentile bootstrap over validation images (2,000 resamples, seed 0)",
    }
