"""`tlbench eval`: the linear probe against scikit-learn, k-NN, few-shot episodes (paired between
backbones), one feature extraction for all three protocols, the report page's protocols table and
figure, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def test_the_fits_keep_probabilities_out_of_subnormal_floats() -> None:
    """Subnormal floats made a weak-L2 fit 19x slower on x86: the fits floor each logit 60 below its
    row's largest, so no probability is subnormal, and the fit is the one float32 gives without."""
    from tlbench.eval.linear import accuracy, fit, floored

    x, y = (torch.from_numpy(a) for a in _blobs(300, 8, 3, seed=0, spread=0.3))
    x = 20 * x.float()  # separable, with large features: logits far apart at weak L2
    tiny = torch.finfo(torch.float32).tiny  # the smallest normal float32

    def subnormal(p: torch.Tensor) -> int:
        return int(((p > 0) & (p < tiny)).sum())

    plain = fit(x, y, 3, 1e-6, iterations=50, floor=None)
    ours = fit(x, y, 3, 1e-6, iterations=50)
    assert subnormal(torch.softmax(plain.logits(x), 1)) > 0  # the problem, without the floor
    assert subnormal(torch.softmax(floored(ours.logits(x)), 1)) == 0
    assert torch.allclose(ours.weight, plain.weight, atol=1e-5) and accuracy(ours, x, y) == accuracy(
        plain, x, y
    )


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


def test_episodes_fixed_by_the_seed_and_the_heads_score_them() -> None:
    from tlbench.eval.fewshot import draw_episodes, episodes_fingerprint, fewshot_probe

    labels = np.repeat(np.arange(8), 30)
    pool = np.arange(len(labels))
    info = {"source_fingerprint": "x", "class_list_hash": "y"}
    a = [draw_episodes(pool, labels, 5, k, 4, 40, seed=0) for k in (1, 5)]
    b = [draw_episodes(pool, labels, 5, k, 4, 40, seed=0) for k in (1, 5)]
    c = [draw_episodes(pool, labels, 5, k, 4, 40, seed=1) for k in (1, 5)]
    assert episodes_fingerprint(a, info) == episodes_fingerprint(b, info) != episodes_fingerprint(c, info)
    ep = a[1]
    assert ep.images.shape == (40, 5, 9)
    for e in range(40):  # 5 distinct classes, each row one class, no image twice
        assert len({labels[row[0]] for row in ep.images[e]}) == 5
        assert all(len(set(labels[row])) == 1 and len(set(row)) == 9 for row in ep.images[e])
    g = np.random.default_rng(0)
    features = torch.from_numpy((np.eye(8)[labels] * 3 + g.normal(size=(len(labels), 8))).astype(np.float32))
    result = fewshot_probe(features, a, torch.device("cpu"))
    five = result["settings"][1]
    for head in ("prototype", "logreg"):
        assert five[head]["low"] < five[head]["mean"] < five[head]["high"] and five[head]["mean"] > 0.8
        assert len(five[head]["episodes_acc"]) == 40
    assert five["prototype"]["mean"] > result["settings"][0]["prototype"]["mean"]  # 5 shots beat 1


def test_paired_difference_and_t_interval() -> None:
    """The paired t-test and t-interval against scipy's."""
    stats = pytest.importorskip("scipy.stats")
    from tlbench.eval.intervals import paired, t_interval

    g = np.random.default_rng(0)
    a = g.uniform(0.4, 0.9, size=50)
    b = a - 0.03 + g.normal(scale=0.05, size=50)
    out = paired(a, b)
    ref = stats.ttest_rel(a, b)
    assert out["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    lo, hi = stats.t.interval(0.95, 49, loc=(a - b).mean(), scale=stats.sem(a - b))
    assert (out["low"], out["high"]) == pytest.approx((lo, hi), rel=1e-6)
    assert t_interval(a)["half_width"] == pytest.approx(stats.t.ppf(0.975, 49) * stats.sem(a), rel=1e-6)


@pytest.fixture
def one_thread() -> object:
    """Tiny L-BFGS problems: one thread (a busy shared CPU makes two threads many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ravi(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A synthetic Ravi csv layout: 25 classes x 24 images at 32 px, 5 of them few-shot test classes."""
    from tlbench.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("ravi") / "d", "ravi-csv", 25, 24, 32, 0, progress=False)


_FAST = ("--image-size", "32", "--no-pretrained", "--device", "cpu", "--amp", "off", "-q")


def test_eval_extracts_once_for_all_protocols_and_pairs_backbones(
    cli, ravi, tmp_path, one_thread, monkeypatch
) -> None:
    import json

    from tlbench.eval import features

    before = features.EXTRACTIONS[0]
    args = ("eval", "test_resnet,test_vit", "--data", ravi, *_FAST, "--episodes", "40", "--queries", "5")
    code, _, err = cli(*args, "--out", tmp_path / "ev")
    assert code == 0, err
    assert features.EXTRACTIONS[0] - before == 2  # one extraction per backbone for all three protocols
    doc = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert doc["fewshot_pool"].startswith("the source's few-shot test split: 5 classes")
    assert len(doc["episodes_fingerprint"]) == 16
    for row in doc["rows"]:
        assert row["linear_low"] <= row["linear_top1"] <= row["linear_high"] and "knn_top1" in row
        assert row["fewshot_5w1s_prototype_low"] < row["fewshot_5w1s_prototype"] and row["leakage"]
    pairs = {(p["setting"], p["head"]) for p in doc["paired"]}
    assert pairs == {(f"5-way {k}-shot", h) for k in (1, 5) for h in ("prototype", "logreg")}
    res = json.loads((tmp_path / "ev" / "test_vit" / "results.json").read_text())
    # each backbone's own results name the episodes it was scored on: the same for both
    per_backbone = {r["episodes_fingerprint"] for r in doc["rows"]}
    resnet = json.loads((tmp_path / "ev" / "test_resnet" / "results.json").read_text())
    per_backbone |= {res["fewshot"]["episodes_fingerprint"], resnet["fewshot"]["episodes_fingerprint"]}
    assert per_backbone == {doc["episodes_fingerprint"]}
    diffs = [
        a - b
        for a, b in zip(
            json.loads((tmp_path / "ev" / "test_resnet" / "results.json").read_text())["fewshot"]["settings"][
                0
            ]["prototype"]["episodes_acc"],
            res["fewshot"]["settings"][0]["prototype"]["episodes_acc"],
            strict=True,
        )
    ]
    first = next(p for p in doc["paired"] if p["setting"] == "5-way 1-shot" and p["head"] == "prototype")
    assert first["diff"] == pytest.approx(np.mean(diffs)) and first["episodes"] == 40
    # the same command again reads the features from the cache, and draws the same episodes
    code, _, err = cli(*args, "--out", tmp_path / "again", "--protocols", "fewshot")
    assert code == 0, err
    assert features.EXTRACTIONS[0] - before == 2
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert again["episodes_fingerprint"] == doc["episodes_fingerprint"]
    assert all(r["features_reused"] for r in again["rows"]) and "linear_top1" not in again["rows"][0]
    monkeypatch.setenv("COLUMNS", "200")  # the terminal table on one line per row
    code, out, err = cli("report", tmp_path / "ev")
    assert code == 0, err
    shown = out + err  # the terminal tables go to the console
    assert "5-way 1-shot" in shown and "test_vit" in shown and "k-NN" in shown
    code, out, _ = cli("report", tmp_path / "ev", "--format", "json")
    assert code == 0 and json.loads(out)[0]["backbone"] == "test_resnet"
    _the_page_draws_the_protocols(cli, tmp_path / "ev", tmp_path / "again", tmp_path / "page.html")


def _the_page_draws_the_protocols(cli, both: Path, fewshot_only: Path, page: Path) -> None:
    """The report page's protocols section: the table, then a figure with a group of bars per protocol
    the rows have and one bar per backbone in each; a protocol no row has is no group (fine-tune here:
    no runs are reported; linear and k-NN in `fewshot_only`), a row without one has no bar there."""
    from matplotlib.container import BarContainer

    from tlbench.report.plots import plain_text
    from tlbench.report.protocol_plot import protocols_figure
    from tlbench.report.protocols import collect_eval

    code, _, err = cli("report", both, "--format", "html", "--out", page)
    assert code == 0, err
    section = page.read_text().split("<h2 id='protocols'>", 1)[1]
    table, figure = section.index("<table>"), section.index("<figure><img")
    assert table < figure and "<h2" not in section[:figure]
    assert section[figure:].split("src='", 1)[1].startswith("data:image/png;base64,")

    def drawn(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[str, int]]:
        with plain_text():
            fig = protocols_figure(rows)
        assert fig is not None
        ax = fig.axes[0]
        groups = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        return groups, legend, {c.get_label(): len(c) for c in ax.containers if isinstance(c, BarContainer)}

    rows, _ = collect_eval([both])
    every = ["linear probe top-1", "k-NN top-1", "5-way 1-shot", "5-way 5-shot"]
    assert drawn(rows) == (every, ["test_resnet", "test_vit"], {"test_resnet": 4, "test_vit": 4})
    del rows[1]["knn_top1"]
    assert drawn(rows)[2] == {"test_resnet": 4, "test_vit": 3}
    rows, _ = collect_eval([fewshot_only])
    assert drawn(rows)[::2] == (["5-way 1-shot", "5-way 5-shot"], {"test_resnet": 2, "test_vit": 2})


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--ways", "6"), "6-way episodes need 6 evaluation classes; there are 5. use --ways 5 or fewer"),
        (("--queries", "20"), "an episode needs shots + queries = 25 per class"),
        (("--shots", "0"), "--shots '0' must be whole numbers >= 1"),
        (("--protocols", "linear,svm"), "--protocols 'svm' is not one of linear, knn, fewshot"),
    ],
)
def test_eval_bad_input_is_one_line(cli, ravi, tmp_path, extra, says) -> None:
    code, _, err = cli("eval", "test_resnet", "--data", ravi, *_FAST, "--out", tmp_path / "x", *extra)
    lines = err.strip().splitlines()
    assert code in (2, 4) and says in lines[-1] and lines[-1].startswith("tlbench: error:")
    assert "Traceback" not in err and not (tmp_path / "x" / "eval.json").exists()


def test_the_protocols_fine_tune_column_counts_only_the_runs_table_rows() -> None:
    """A tuning trial (best of many draws) or a raced-out cell is not a backbone's fine-tune result."""
    from types import SimpleNamespace

    from tlbench.report.protocols import with_finetune

    def run(top1: float, trial: str | None = None, status: str = "finished") -> Any:
        return SimpleNamespace(
            kind="run", backbone="test_resnet", final_val_top1=top1, trial=trial, status=status
        )

    records = [run(0.40), run(0.90, trial="cfg#t3"), run(0.80, status="stopped_early")]
    (row,) = with_finetune([{"backbone": "test_resnet"}], records)
    assert row["finetune_top1"] == 0.40
