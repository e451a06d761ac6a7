"""`tlbench eval`: the linear probe, k-NN and few-shot episodes of several backbones, each from one
feature extraction, written to an evaluation folder.

    EV/
      <backbone>/results.json   every protocol's numbers for one backbone (few-shot: per episode too)
      eval.json                 the options, the data, the episodes' fingerprint, one row per backbone
                                and the paired few-shot comparisons; written last: the folder is
                                complete when it exists (`tlbench report EV` reads it)

Bad input fails before any feature is extracted: a one-line `tlbench.errors` exception.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlbench import runtime
from tlbench._console import say
from tlbench._io import write_json
from tlbench._util import safe_name
from tlbench.config.eval import EvalOptions
from tlbench.errors import OutputError, UsageError
from tlbench.options import EVAL_DIR

FORMAT = "tlbench-eval/1"
RESULTS = "results.json"
EVAL_FILE = "eval.json"


def evaluate(backbones: list[str], opts: EvalOptions, *, progress: bool = True) -> Path:
    """Evaluate each backbone's frozen features with `opts.protocols`; returns the evaluation folder.

    Raises:
        UsageError: No backbone, or one named twice.
        OutputError: The folder already holds an evaluation.
        DataError: Data that cannot give the episodes asked for (too few classes or images).
    """
    from tlbench.config.run import parse_select
    from tlbench.data.dataset import hold_out_selection, load_data
    from tlbench.eval.fewshot import episodes_fingerprint

    if not backbones or len(set(backbones)) != len(backbones):
        raise UsageError(
            f"backbones {','.join(backbones)!r} must name each backbone once",
            "e.g. resnet50,vit_small_patch16_224",
        )
    out = (
        Path(opts.out)
        if opts.out
        else EVAL_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name('-'.join(backbones))}"
    )
    if (out / EVAL_FILE).exists():
        raise OutputError(f"{out} already holds an evaluation", "choose a new folder with --out")
    dev = runtime.resolve_device(opts.device)
    bundle = load_data(
        opts.data, opts.image_size, opts.interpolation, data_format=opts.data_format,
        split_seed=opts.split_seed, skip_corrupt=opts.skip_corrupt, progress=progress,
    )  # fmt: skip
    bundle = hold_out_selection(bundle, parse_select(opts.select), opts.select, opts.split_seed)
    episodes, pool_text = _episodes(bundle, opts) if "fewshot" in opts.protocols else ([], None)
    fingerprint = episodes_fingerprint(episodes, bundle.info) if episodes else None
    rows = []
    for name in backbones:
        result = _evaluate_one(name, bundle, opts, episodes, dev, progress)
        if "fewshot" in result:  # the same episodes for every backbone: the same fingerprint
            result["fewshot"]["episodes_fingerprint"] = fingerprint
        write_json(out / safe_name(name) / RESULTS, result)
        rows.append(result)
        say(_line(result))
    doc = _document(rows, bundle, opts, fingerprint, pool_text)
    write_json(out / EVAL_FILE, doc)
    say(f"eval {out}: {len(rows)} backbone(s); compare with: tlbench report {out}", soft_wrap=True)
    return out


def _episodes(bundle: Any, opts: EvalOptions) -> tuple[list[Any], str]:
    """Every shot setting's episodes, checked against the data before any extraction."""
    from tlbench.eval.fewshot import check_pool, draw_episodes, evaluation_pool

    pool, text = evaluation_pool(bundle)
    labels = bundle.train.packed.labels
    check_pool(pool, labels, bundle.classes, opts.ways, max(opts.shots) + opts.queries)
    settings = [
        draw_episodes(pool, labels, opts.ways, k, opts.queries, opts.episodes, opts.seed) for k in opts.shots
    ]
    return settings, text


def _model(name: str, bundle: Any, opts: EvalOptions, dev: torch.device) -> tuple[Any, Any, Any]:
    """The frozen backbone (freeze all, eval mode), its input transform and its autocast dtype."""
    from tlbench.data.augment import BatchTransform
    from tlbench.models import build_model
    from tlbench.train.inputs import normalization

    torch.manual_seed(opts.seed)  # a random initialisation (--no-pretrained) is the seed's
    model = build_model(
        name, bundle.num_classes, pool=opts.pool, freeze="all", pretrained=opts.pretrained,
        weights=opts.weights, image_size=opts.image_size,
    ).to(dev).eval()  # fmt: skip
    mean, std = normalization(opts.normalize, model.data_config)
    amp_dtype, _why = runtime.choose_amp(opts.amp, dev)
    return model, BatchTransform(None, mean, std), amp_dtype


def _evaluate_one(
    name: str, bundle: Any, opts: EvalOptions, episodes: list[Any], dev: torch.device, progress: bool
) -> dict[str, Any]:
    """One backbone: extract (or reuse) the features once, then run every protocol on them."""
    from tlbench.eval.features import load_or_extract
    from tlbench.report.leakage import leakage_flag

    model, transform, amp_dtype = _model(name, bundle, opts, dev)
    packed = bundle.train.packed
    found = load_or_extract(
        model, packed.images, bundle.info, transform, dev, amp_dtype, opts.batch_size,
        cache=opts.feature_cache, progress=progress,
    )  # fmt: skip
    del model
    result: dict[str, Any] = {
        "format": FORMAT,
        "backbone": name,
        "weights_source": found.key["weights_source"],
        "leakage": leakage_flag(found.key["weights_source"], bundle.info),
        "features": found.record(),
        "device": str(dev),
    }
    splits = _splits(found.features, bundle)
    if "linear" in opts.protocols:
        from tlbench.eval.linear import linear_probe

        result["linear"] = linear_probe(splits, bundle.classes, dev)
    if "knn" in opts.protocols:
        from tlbench.eval.knn import knn_probe

        result["knn"] = knn_probe(splits, bundle.classes, dev)
    if episodes:
        from tlbench.eval.fewshot import fewshot_probe

        result["fewshot"] = fewshot_probe(found.features, episodes, dev)
    return result


def _splits(features: torch.Tensor, bundle: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`fit` (training images without the selection split), `select`, `train` (both) and `val`."""
    labels = torch.from_numpy(bundle.train.packed.labels.astype(np.int64))

    def part(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return features.index_select(0, idx), labels.index_select(0, idx)

    whole = np.sort(np.concatenate([bundle.train.indices, bundle.select.indices]))
    return {
        "fit": part(bundle.train.indices),
        "select": part(bundle.select.indices),
        "train": part(whole),
        "val": part(bundle.val.indices),
    }


def protocol_row(result: dict[str, Any]) -> dict[str, Any]:
    """One backbone's headline numbers (fractions), as eval.json's `rows` and the report hold them."""
    row: dict[str, Any] = {"backbone": result["backbone"], "leakage": result["leakage"]}
    for proto in ("linear", "knn"):
        if proto in result:
            r = result[proto]
            row |= {
                f"{proto}_top1": r["top1"],
                f"{proto}_low": r["top1_low"],
                f"{proto}_high": r["top1_high"],
            }
            row[f"{proto}_top5"] = r["top5"]
    if "fewshot" in result:
        row["episodes_fingerprint"] = result["fewshot"].get("episodes_fingerprint")
    for setting in result.get("fewshot", {}).get("settings", []):
        for head in ("prototype", "logreg"):
            key = f"fewshot_{setting['ways']}w{setting['shots']}s_{head}"
            h = setting[head]
            row |= {key: h["mean"], f"{key}_low": h["low"], f"{key}_high": h["high"]}
    row["extract_images_per_sec"] = result["features"]["images_per_sec"]
    row["features_reused"] = result["features"]["reused"]
    row["weights_source"] = result["weights_source"]
    return row


def paired_comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pair of backbones on every few-shot setting and head, episode by episode."""
    from tlbench.eval.intervals import paired

    out = []
    for a, b in itertools.combinations(rows, 2):
        pairs = zip(
            a.get("fewshot", {}).get("settings", []), b.get("fewshot", {}).get("settings", []), strict=True
        )
        for sa, sb in pairs:
            for head in ("prototype", "logreg"):
                test = paired(np.array(sa[head]["episodes_acc"]), np.array(sb[head]["episodes_acc"]))
                out.append({
                    "a": a["backbone"], "b": b["backbone"], "setting": f"{sa['ways']}-way {sa['shots']}-shot",
                    "head": head, **test, "test": "paired t-test over episodes",
                })  # fmt: skip
    return out


def _document(
    results: list[dict[str, Any]], bundle: Any, opts: EvalOptions, fingerprint: str | None, pool: str | None
) -> dict[str, Any]:
    """eval.json: what was evaluated on what, one row per backbone, and the paired comparisons."""
    return {
        "format": FORMAT,
        "options": opts.to_dict(),
        "data_info": bundle.info,
        "selection": bundle.selection,
        "classes": bundle.classes,
        "fewshot_pool": pool,
        "episodes_fingerprint": fingerprint,
        "rows": [protocol_row(r) for r in results],
        "paired": paired_comparisons(results),
        "results": {r["backbone"]: f"{safe_name(r['backbone'])}/{RESULTS}" for r in results},
    }


def _line(result: dict[str, Any]) -> str:
    """One line per backbone on the console."""
    parts = [f"eval {result['backbone']}:"]
    for proto in ("linear", "knn"):
        if proto in result:
            parts.append(f"{proto} {100 * result[proto]['top1']:.2f} %")
    for s in result.get("fewshot", {}).get("settings", []):
        p = s["prototype"]
        parts.append(f"{s['ways']}w{s['shots']}s {100 * p['mean']:.2f} +- {100 * p['half_width']:.2f} %")
    f = result["features"]
    rate = f"{f['images_per_sec']:,.0f} img/s"
    parts.append(f"({'features reused' if f['reused'] else rate})")
    return " ".join(parts)
