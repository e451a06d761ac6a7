"""tlbench.report: run directories with known numbers in, exact aggregates, tables and figures out."""

from __future__ import annotations

import io
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tlbench.errors import UsageError
from tlbench.report import (
    FORMATS,
    aggregate,
    collect_runs,
    leakage_flag,
    make_plots,
    pareto_front,
    print_table,
    render,
)
from tlbench.report.collect import COLUMNS
from tlbench.report.plots import PLOT_FILES
from tlbench.train.config import RunConfig
from tlbench.train.recipes import get_recipe

STANDARD_HASH = "5f1c0a2b9d3e"
METRIC_COLUMNS = (
    "epoch,train_loss,train_top1,val_loss,val_top1,val_top5,lr,epoch_seconds,train_seconds,"
    "data_seconds,train_images_per_sec"
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data_info(kind: str = "imagefolder") -> dict[str, Any]:
    """data_info as load_data writes it: the real standard data, a custom class list, or synthetic."""
    if kind == "synthetic":
        return {
            "root": "/home/u/.cache/tlbench/data/synthetic/imagefolder-100x60-84px-s0",
            "spec": "synthetic",
            "format": "imagefolder",
            "num_classes": 100,
            "class_list_hash": STANDARD_HASH,  # synthetic sets use the real wnids
            "standard_mini_imagenet": True,
            "split_seed": None,
        }
    info = {
        "root": "/data/mini-imagenet",
        "spec": "/data/mini-imagenet",
        "format": "imagefolder",
        "num_classes": 100,
        "class_list_hash": STANDARD_HASH,
        "standard_mini_imagenet": True,
        "split_seed": None,
    }
    if kind == "custom":
        info |= {"class_list_hash": "0123456789ab", "standard_mini_imagenet": False, "num_classes": 10}
    return info


def write_run(
    root: Path,
    name: str,
    *,
    backbone: str = "vgg19",
    recipe: str = "keras-vgg19",
    freeze: str = "11",
    seed: int = 0,
    val_top1: tuple[float, ...] = (0.5, 0.7, 0.6),
    val_top5: tuple[float, ...] | None = None,
    final_val_loss: float = 1.0,
    train_ips: float = 300.0,
    infer_ips: float = 1000.0,
    peak: int = 2 * 2**30,
    wall: float = 60.0,
    data: str = "imagefolder",
    weights_source: str = "timm/vgg19.tv_in1k",
    status: str | None = "finished",
    params: dict[str, int] | None = None,
    summary: bool = True,
    **recipe_overrides: Any,
) -> Path:
    """A run directory in the loop's format: config.json, metrics.csv and (if finished) summary.json."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    epochs = len(val_top1)
    val_top5 = val_top5 or tuple(min(1.0, v + 0.2) for v in val_top1)
    resolved = get_recipe(recipe).replace(epochs=recipe_overrides.pop("epochs", epochs), **recipe_overrides)
    counts = params or {"total": 20_100_000, "trainable": 9_000_000, "frozen": 11_100_000}
    counts = {"backbone": 20_000_000, "head": 100_000} | counts
    info = _data_info(data)
    config = RunConfig(
        backbone=backbone, recipe=resolved, freeze=freeze, seed=seed, data=info["spec"]
    ).to_dict()
    config |= {
        "data_info": info,
        "classes": [],
        "model": {},
        "weights_source": weights_source,
        "normalization": {"mode": resolved.normalize, "mean": None, "std": None},
        "device_resolved": "cpu",
        "amp_resolved": "off",
        "params": counts,
        "freeze_index": 11,
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    lines = [METRIC_COLUMNS]
    for i, (top1, top5) in enumerate(zip(val_top1, val_top5, strict=True)):
        row = (i + 1, 2.0 - 0.1 * i, 0.4 + 0.1 * i, 1.5 - 0.1 * i, top1, top5, 1e-4, 5.5, 5.0, 0.5, train_ips)
        lines.append(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    if summary:
        best = max(range(epochs), key=lambda i: val_top1[i])
        doc = {
            "status": status,
            "best_val_top1": val_top1[best],
            "best_epoch": best + 1,
            "final_val_top1": val_top1[-1],
            "final_val_top5": val_top5[-1],
            "final_val_loss": final_val_loss,
            "epochs": epochs,
            "params_total": counts["total"],
            "params_trainable": counts["trainable"],
            "params_frozen": counts["frozen"],
            "wall_seconds": wall,
            "train_images_per_sec": train_ips,
            "infer_images_per_sec": infer_ips,
            "peak_memory_bytes": peak,
            "device": "cpu",
            "amp": "off",
            "weights_source": weights_source,
        }
        if status is None:
            del doc["status"]
        (run_dir / "summary.json").write_text(json.dumps(doc, indent=2))
    return run_dir


def write_baseline(
    root: Path, name: str, top1: float, *, backbone: str = "vgg19", data: str = "imagefolder"
) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"kind": "baseline", "backbone": backbone, "data_info": _data_info(data)}
    config["weights_source"] = f"timm/{backbone}.tv_in1k"
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "summary.json").write_text(json.dumps({"val_top1": top1, "val_top5": 0.97}))
    return run_dir


@pytest.fixture
def three_seeds(tmp_path: Path) -> tuple[Path, list[dict[str, float]]]:
    """One configuration, three seeds, with different numbers per seed."""
    numbers = [
        {"top1": (0.50, 0.71, 0.70), "loss": 1.10, "ips": 300.0, "peak": 3 * 2**30, "wall": 61.0},
        {"top1": (0.52, 0.73, 0.74), "loss": 1.04, "ips": 310.0, "peak": 4 * 2**30, "wall": 64.0},
        {"top1": (0.55, 0.78, 0.77), "loss": 0.98, "ips": 305.0, "peak": 2 * 2**30, "wall": 59.5},
    ]
    for seed, n in enumerate(numbers):
        write_run(
            tmp_path / "runs",
            f"vgg19-s{seed}",
            seed=seed,
            val_top1=n["top1"],
            val_top5=(0.80 + seed / 100, 0.91 + seed / 100, 0.90),
            final_val_loss=n["loss"],
            train_ips=n["ips"],
            peak=n["peak"],
            wall=n["wall"],
        )
    return tmp_path / "runs", numbers


def test_mean_and_sample_std_over_three_seeds(three_seeds: tuple[Path, list[dict[str, Any]]]) -> None:
    root, numbers = three_seeds
    records, skipped = collect_runs([root])
    assert skipped == [] and len(records) == 3
    df = aggregate(records)
    assert len(df) == 1
    row = df.iloc[0]
    best = [max(n["top1"]) for n in numbers]
    assert row["n"] == 3 and row["seeds"] == "0,1,2"
    assert row["best_val_top1_mean"] == statistics.mean(best)
    assert row["best_val_top1_std"] == statistics.stdev(best)
    top5_at_best = [0.91, 0.90, 0.93]  # top-5 at the best top-1 epoch: 2, 3 and 2
    assert row["best_val_top5_mean"] == pytest.approx(statistics.mean(top5_at_best), abs=1e-12)
    losses = [n["loss"] for n in numbers]
    assert row["final_val_loss_mean"] == statistics.mean(losses)
    assert row["final_val_loss_std"] == statistics.stdev(losses)
    assert row["final_val_top1_mean"] == statistics.mean([n["top1"][-1] for n in numbers])
    assert row["train_images_per_sec"] == statistics.mean([n["ips"] for n in numbers])
    assert row["peak_memory_bytes"] == 4 * 2**30
    assert row["wall_seconds"] == statistics.mean([n["wall"] for n in numbers])
    assert row["params_trainable"] == 9_000_000 and row["params_total"] == 20_100_000
    assert row["frozen_fraction"] == pytest.approx(11_100_000 / 20_000_000)
    assert row["device"] == "cpu, fp32"
    assert (row["backbone"], row["recipe"], row["freeze"], row["epochs"]) == ("vgg19", "keras-vgg19", "11", 3)
    markdown = render(df, "markdown")
    mean, sd = 100 * statistics.mean(best), 100 * statistics.stdev(best)
    assert f"{mean:.2f} ± {sd:.2f} (3)" in markdown


def test_one_seed_has_no_std_and_short_runs_say_so(tmp_path: Path) -> None:
    write_run(tmp_path, "only", val_top1=(0.6, 0.7), status="max_time", epochs=5)
    df = aggregate(collect_runs([tmp_path])[0])
    row = df.iloc[0]
    assert row["n"] == 1 and math.isnan(row["best_val_top1_std"]) and math.isnan(row["final_val_loss_std"])
    assert row["stopped_early"] == 1 and row["epochs_done"] == 2
    markdown = render(df, "markdown")
    assert "70.00 ± - (1)" in markdown
    assert "| 2/5 |" in markdown
    assert json.loads(render(df, "json"))[0]["best_val_top1_std"] is None


def test_grouping_separates_configurations(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path, f"f11-s{seed}", freeze="11", seed=seed)
    write_run(tmp_path, "fnone", freeze="none")
    write_run(tmp_path, "fall", freeze="all")
    write_run(tmp_path, "f50pct", freeze="50%")
    write_run(tmp_path, "f5", freeze="5")
    write_run(tmp_path, "lr", freeze="11", lr=1e-3)
    write_run(tmp_path, "resnet", backbone="resnet50", weights_source="timm/resnet50.a1_in1k")
    write_run(tmp_path, "synthetic", data="synthetic")
    write_run(tmp_path, "timm-ft", recipe="timm-ft", freeze="none")
    df = aggregate(collect_runs([tmp_path])[0])
    assert len(df) == 9 and df["n"].sum() == 10
    vgg = df[(df["backbone"] == "vgg19") & (df["recipe"] == "keras-vgg19") & (df["recipe_overrides"] == "")]
    real = vgg[vgg["dataset"] == "imagefolder"]
    assert list(real["freeze"]) == ["none", "5", "11", "50%", "all"]  # depth order, not string order
    assert list(real["n"]) == [1, 1, 2, 1, 1]
    assert set(df["recipe_overrides"]) == {"", "lr=0.001"}
    assert "synthetic imagefolder-100x60-84px-s0" in set(df["dataset"])


def test_custom_group_key(tmp_path: Path) -> None:
    write_run(tmp_path, "a", freeze="11", val_top1=(0.6,))
    write_run(tmp_path, "b", freeze="none", val_top1=(0.8,))
    df = aggregate(collect_runs([tmp_path])[0], group_by=["backbone", "recipe.lr"])
    assert len(df) == 1 and df.iloc[0]["freeze"] == "11, none" and df.iloc[0]["recipe.lr"] == 1e-4
    assert df.iloc[0]["best_val_top1_mean"] == statistics.mean([0.6, 0.8])
    assert "recipe.lr" in render(df, "markdown")
    with pytest.raises(UsageError, match="cannot group by"):
        aggregate(collect_runs([tmp_path])[0], group_by=["no_such_field"])


def test_bad_run_directories_are_skipped_with_the_reason(tmp_path: Path) -> None:
    good = write_run(tmp_path, "good")
    write_run(tmp_path, "unfinished", summary=False)
    write_run(tmp_path, "corrupt", summary=False)
    (tmp_path / "corrupt" / "summary.json").write_text('{"status": "finished", "best_val')
    write_run(tmp_path, "failed", status="failed")
    write_run(tmp_path, "bad-config")
    (tmp_path / "bad-config" / "config.json").write_text("[1, 2")
    write_run(tmp_path, "no-config")
    (tmp_path / "no-config" / "config.json").unlink()
    write_run(tmp_path, "not-a-run")
    (tmp_path / "not-a-run" / "config.json").write_text('{"architecture": "vgg19"}')
    write_run(tmp_path, "no-top1")
    (tmp_path / "no-top1" / "summary.json").write_text('{"status": "finished", "best_val_top1": null}')
    (good / "model").mkdir()
    (good / "model" / "config.json").write_text("{}")  # the saved model's config: not a run
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "good").symlink_to(good, target_is_directory=True)
    (tmp_path / "links" / "loop").symlink_to(tmp_path, target_is_directory=True)
    records, skipped = collect_runs([tmp_path, tmp_path / "missing"])
    assert [r.path for r in records] == [good]
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons["unfinished"].startswith("unfinished: no summary.json")
    assert "tlbench run --resume" in reasons["unfinished"]
    assert reasons["corrupt"].startswith("corrupt summary.json: ")
    assert reasons["failed"] == "status 'failed'"
    assert reasons["bad-config"].startswith("corrupt config.json")
    assert reasons["no-config"].startswith("missing config.json")
    assert "no backbone" in reasons["not-a-run"]
    assert "no validation top-1" in reasons["no-top1"]
    assert reasons["missing"] == "no such file or directory"
    assert len(skipped) == 8


def test_an_empty_folder_gives_an_empty_result(tmp_path: Path) -> None:
    records, skipped = collect_runs([tmp_path])
    assert records == [] and skipped == []
    df = aggregate(records)
    assert df.empty and list(df.columns) == list(COLUMNS)
    for fmt in FORMATS:
        assert isinstance(render(df, fmt), str)
    assert json.loads(render(df, "json")) == []
    assert make_plots(records, df, tmp_path / "plots") == []


def test_every_format_renders(three_seeds: tuple[Path, Any], tmp_path: Path) -> None:
    root, _ = three_seeds
    write_run(root, "resnet", backbone="resnet50", weights_source="timm/resnet50.a1_in1k", val_top1=(0.9,))
    df = aggregate(collect_runs([root])[0])
    back = pd.read_csv(io.StringIO(render(df, "csv")))
    assert list(back.columns) == list(df.columns)
    assert list(back["best_val_top1_mean"]) == list(df["best_val_top1_mean"])  # full precision
    rows = json.loads(render(df, "json"))
    assert [r["backbone"] for r in rows] == ["resnet50", "vgg19"]
    assert rows[1]["best_val_top1_mean"] == df.iloc[1]["best_val_top1_mean"]
    markdown = render(df, "markdown").splitlines()
    assert markdown[0].startswith("| backbone | recipe |") and set(markdown[1]) <= {"|", " ", "-"}
    assert "weights" in markdown[0]  # varies between rows, so it gets a column
    assert "<table>" in render(df, "html") and "</table>" in render(df, "html")
    with pytest.raises(UsageError):
        render(df, "xlsx")


def test_print_table(three_seeds: tuple[Path, Any]) -> None:
    from rich.console import Console

    df = aggregate(collect_runs([three_seeds[0]])[0])
    console = Console(record=True, width=400, file=io.StringIO())
    print_table(df, console)
    text = console.export_text()
    assert "vgg19" in text and "(3)" in text and "seen: images+classes" in text


def test_plots_are_png_files(three_seeds: tuple[Path, Any], tmp_path: Path) -> None:
    root, _ = three_seeds
    write_run(root, "f5", freeze="5", train_ips=200.0)
    write_baseline(root, "baseline-vgg19", 0.88)
    records, _ = collect_runs([root])
    df = aggregate(records)
    out = tmp_path / "plots"
    paths = make_plots(records, df, out)
    assert [p.name for p in paths] == list(PLOT_FILES)
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    assert sorted(p.name for p in out.iterdir()) == sorted(PLOT_FILES)  # no temporary files left


def test_pareto_front() -> None:
    points = [(100.0, 70.0), (200.0, 60.0), (50.0, 80.0), (150.0, 65.0), (90.0, 60.0), (200.0, 55.0)]
    assert pareto_front(points) == [0, 1, 2, 3]  # (90, 60) loses to (100, 70); (200, 55) to (200, 60)
    assert pareto_front([(1.0, 1.0), (1.0, 1.0), (math.nan, 5.0), (0.5, 0.5)]) == [0, 1]
    assert pareto_front([]) == []


def test_baseline_fills_the_same_backbone_and_class_list(tmp_path: Path) -> None:
    write_run(tmp_path, "vgg", val_top1=(0.7,))
    write_run(tmp_path, "resnet", backbone="resnet50", weights_source="timm/resnet50.a1_in1k")
    write_run(tmp_path, "custom", data="custom")
    write_run(tmp_path, "synthetic", data="synthetic")
    write_baseline(tmp_path, "base-vgg", 0.897)
    write_baseline(tmp_path, "base-vgg-synthetic", 0.01, data="synthetic")
    records, skipped = collect_runs([tmp_path])
    assert skipped == [] and sum(r.kind == "baseline" for r in records) == 2
    df = aggregate(records)
    assert len(df) == 4  # baselines are not rows of their own
    baseline = {(r.backbone, r.dataset, r.class_list_hash): r.baseline_top1 for r in df.itertuples()}
    assert baseline[("vgg19", "imagefolder", STANDARD_HASH)] == 0.897
    assert baseline[("vgg19", "synthetic imagefolder-100x60-84px-s0", STANDARD_HASH)] == 0.01
    assert math.isnan(baseline[("resnet50", "imagefolder", STANDARD_HASH)])  # no resnet50 baseline
    assert math.isnan(baseline[("vgg19", "imagefolder", "0123456789ab")])  # another class list
    assert "89.70" in render(df, "markdown")


@pytest.mark.parametrize(
    ("weights", "data", "expected"),
    [
        ("timm/vgg19.tv_in1k", "imagefolder", "seen: images+classes"),
        ("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "imagefolder", "seen: images+classes"),
        ("timm/vgg19.tv_in1k", "custom", "classes may overlap"),
        ("none (random init)", "imagefolder", "none"),
        ("timm/vgg19.tv_in1k", "synthetic", "none (synthetic)"),
        ("none (random init)", "synthetic", "none (synthetic)"),
        ("file /models/mine.safetensors", "imagefolder", "unknown (custom weights)"),
    ],
)
def test_leakage_rule(weights: str, data: str, expected: str) -> None:
    assert leakage_flag(weights, _data_info(data)) == expected


def test_leakage_forms_and_table_column(tmp_path: Path) -> None:
    for fmt in ("ravi-csv", "pickle", "parquet"):
        info = _data_info() | {"format": fmt, "root": f"/data/{fmt}"}
        assert leakage_flag("timm/resnet50.a1_in1k", info) == "seen: images+classes"
    assert leakage_flag("timm/vgg19.tv_in1k", {"spec": "synthetic:10x60@32/parquet"}) == "none (synthetic)"
    write_run(tmp_path, "scratch", weights_source="none (random init)")
    write_run(tmp_path, "pretrained")
    df = aggregate(collect_runs([tmp_path])[0])
    assert sorted(df["leakage"]) == ["none", "seen: images+classes"]


def test_importing_the_report_does_not_import_torch() -> None:
    code = "import sys, tlbench.report; print(sorted({'torch', 'pandas', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
