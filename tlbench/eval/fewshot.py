"""Few-shot episodes on frozen features: mini-ImageNet's own protocol (Vinyals et al. 2016; Ravi &
Larochelle 2017; the heads of ProtoNet and of rfs, `eval/meta_eval.py`).

An N-way K-shot episode draws N evaluation classes, then K support and Q query images of each,
without replacement. The episodes come from the evaluation classes (`evaluation_pool`): the
source's few-shot test split when it has one (Ravi's 20 classes), else its few-shot validation
split, else the validation images of every class. They are fixed by the seed alone, before any
feature is read, so every backbone sees the same episodes; `episodes_fingerprint` hashes them.

Two heads per episode, both on L2-normalised features: nearest centroid (the mean of each class's
support features; Euclidean distance) and multinomial logistic regression on the support set
(scikit-learn's default objective, C = 1, as rfs; all episodes fitted at once with L-BFGS, their
objectives summed, which leaves each episode's minimiser unchanged). Accuracy is over the N x Q
queries of an episode; the mean over episodes has a 95 % t-interval.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tlbench.data.cache import GROUPS
from tlbench.errors import DataError
from tlbench.eval.linear import floored

HEADS = ("prototype", "logreg")
CHUNK_ELEMENTS = 2**26
"""Feature values gathered at once (episodes x N x (K + Q) x dim floats: 256 MiB)."""


def evaluation_pool(bundle: Any) -> tuple[np.ndarray, str]:
    """The packed indices the episodes draw from, and which images they are, in words.

    A source split whose classes no training image has is a few-shot class split (the Ravi csv and
    pickle layouts): its test split first, else its validation split. Otherwise (ImageFolder,
    parquet, synthetic ImageFolder), the validation split of the 100-way task.
    """
    packed = bundle.train.packed
    groups, labels = packed.groups, packed.labels

    def classes_of(group: str) -> set[int]:
        return set(np.unique(labels[groups == GROUPS.index(group)]).tolist())

    train_classes = classes_of("train")
    for group in ("test", "val"):
        found = classes_of(group)
        if found and not found & train_classes:
            return (
                np.flatnonzero(groups == GROUPS.index(group)),
                f"the source's few-shot {group} split: {len(found)} classes no training image has",
            )
    n = len(np.unique(bundle.val.labels))
    return bundle.val.indices, f"the validation split ({n} classes, also those of the linear probe)"


@dataclass(frozen=True)
class Episodes:
    """One shot setting's episodes.

    Attributes:
        ways: Classes per episode.
        shots: Support images per class.
        queries: Query images per class.
        images: (episodes, ways, shots + queries) packed indices; per class the support comes first.
    """

    ways: int
    shots: int
    queries: int
    images: np.ndarray

    @property
    def count(self) -> int:
        return int(self.images.shape[0])

    @property
    def name(self) -> str:
        return f"{self.ways}-way {self.shots}-shot"


def check_pool(pool: np.ndarray, labels: np.ndarray, classes: list[str], ways: int, need: int) -> None:
    """Raise a one-line DataError when the pool cannot give `ways` classes of `need` images each."""
    counts = {int(c): int(n) for c, n in zip(*np.unique(labels[pool], return_counts=True), strict=True)}
    if len(counts) < ways:
        raise DataError(
            f"{ways}-way episodes need {ways} evaluation classes; there are {len(counts)}",
            f"use --ways {max(2, len(counts))} or fewer, or data with more classes",
        )
    small = {c: n for c, n in counts.items() if n < need}
    if small:
        c, n = min(small.items(), key=lambda item: item[1])
        raise DataError(
            f"class {classes[c]} has {n} evaluation image(s); an episode needs shots + queries = {need} "
            f"per class ({len(small)} class(es) have fewer)",
            "use fewer --queries or --shots, or data with more images per class",
        )


def draw_episodes(
    pool: np.ndarray, labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int, seed: int
) -> Episodes:
    """`episodes` episodes from the packed indices `pool`, seeded by (seed, shots, queries, ways)."""
    rng = np.random.default_rng([seed, ways, shots, queries, 0xF5])
    by_class = {int(c): np.sort(pool[labels[pool] == c]) for c in np.unique(labels[pool])}
    keys = np.array(sorted(by_class))
    images = np.empty((episodes, ways, shots + queries), dtype=np.int64)
    for e in range(episodes):
        for w, c in enumerate(rng.choice(keys, ways, replace=False)):
            images[e, w] = rng.choice(by_class[int(c)], shots + queries, replace=False)
    return Episodes(ways, shots, queries, images)


def episodes_fingerprint(settings: list[Episodes], data_info: dict[str, Any]) -> str:
    """A short hash of every episode's images (packed positions in the decoded source, whose order
    its files fix) and of the data set: equal fingerprints mean the same episodes."""
    digest = hashlib.sha256(
        f"{data_info.get('source_fingerprint')}:{data_info.get('class_list_hash')}".encode()
    )
    for ep in settings:
        digest.update(f"{ep.ways},{ep.shots},{ep.queries},{ep.count};".encode())
        digest.update(np.ascontiguousarray(ep.images, dtype="<i8").tobytes())
    return digest.hexdigest()[:16]


def _logreg_predict(support: Tensor, queries: Tensor, shots: int, iterations: int = 100) -> Tensor:
    """Per episode, logistic regression (C = 1) on the support set; the queries' predicted ways.

    The L2-penalised minimiser's weights lie in the span of the support features (the representer
    theorem), so W = X^T A is fitted through A, (N K) x N per episode instead of dim x N: the same
    solution, in a space 20x smaller for 512-wide features and 5-way 5-shot.
    """
    e, n, dim = support.shape[0], support.shape[1], support.shape[-1]
    x = support.reshape(e, n * shots, dim)
    gram = x @ x.transpose(1, 2)  # (episodes, NK, NK)
    y = torch.arange(n, device=x.device).repeat_interleave(shots).expand(e, -1)
    a = torch.zeros(e, n * shots, n, device=x.device, requires_grad=True)
    b = torch.zeros(e, 1, n, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=1, max_iter=iterations, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        ga = gram @ a  # the support logits X W = X X^T A, without the bias
        logits = floored((ga + b).reshape(-1, n))  # no subnormal probabilities (`linear.floored`)
        ce = torch.nn.functional.cross_entropy(logits, y.reshape(-1), reduction="sum")
        penalty = 0.5 * (a * ga).sum()  # ||W||^2 = tr(A^T X X^T A)
        loss = (ce + penalty) / e  # sklearn's objective at C = 1, summed over the episodes
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return torch.baddbmm(b, queries @ x.transpose(1, 2), a).argmax(-1)


def episode_accuracies(features: Tensor, ep: Episodes, device: torch.device) -> dict[str, np.ndarray]:
    """Each head's accuracy (a fraction) on each episode."""
    out: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    n, k, q = ep.ways, ep.shots, ep.queries
    chunk = max(1, CHUNK_ELEMENTS // (n * (k + q) * features.shape[1]))
    for lo in range(0, ep.count, chunk):
        idx = torch.from_numpy(ep.images[lo : lo + chunk])
        x = torch.nn.functional.normalize(features[idx.reshape(-1)].to(device).float(), dim=1)
        x = x.reshape(*idx.shape, -1)  # (episodes, ways, shots + queries, dim)
        support, queries = x[:, :, :k], x[:, :, k:].reshape(len(idx), n * q, -1)
        truth = torch.arange(n, device=device).repeat_interleave(q)
        centroids = support.mean(2)
        predicted = {
            "prototype": torch.cdist(queries, centroids).argmin(-1),
            "logreg": _logreg_predict(support, queries, k),
        }
        for head in HEADS:
            out[head].append((predicted[head] == truth).float().mean(1).cpu().numpy())
    return {h: np.concatenate(v) for h, v in out.items()}


def fewshot_probe(features: Tensor, settings: list[Episodes], device: torch.device) -> dict[str, Any]:
    """Every shot setting's heads: mean accuracy with its 95 % t-interval, and the per-episode values."""
    from tlbench.eval.intervals import t_interval

    start = time.perf_counter()
    results = []
    for ep in settings:
        acc = episode_accuracies(features, ep, device)
        heads = {
            h: {**t_interval(acc[h]), "episodes_acc": [round(float(a), 6) for a in acc[h]]} for h in HEADS
        }
        results.append(
            {"ways": ep.ways, "shots": ep.shots, "queries": ep.queries, "episodes": ep.count, **heads}
        )
    return {
        "settings": results,
        "seconds": round(time.perf_counter() - start, 3),
        "interval": "95 % Student t-interval over episodes",
    }
