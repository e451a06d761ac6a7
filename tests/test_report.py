"""tlbench.report: run directories with known numbers in, exact aggregates, tables and figures out."""

from __future__ import annotations

import html
import io
import json
import math
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tlbench.config import run_config
from tlbench.errors import DataError, UsageError
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
from tlbench.report.aggregate import COLUMNS
from tlbench.report.command import report
from tlbench.report.plots import PLOT_FILES
from tlbench.rundir import BaselineConfig, EpochMetrics, Prediction, Resolved, RunDir, RunFile, Summary

STANDARD_HASH = "5f1c0a2b9d3e"
VGG19_WEIGHTS = "timm hub: timm/vgg19.tv_in1k"
RANDOM_INIT = "none (random init)"
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
            "synthetic": True,
            "split_seed": None,
        }
    info = {
        "root": "/data/mini-imagenet",
        "spec": "/data/mini-imagenet",
        "format": "imagefolder",
        "num_classes": 100,
        "class_list_hash": STANDARD_HASH,
        "standard_mini_imagenet": True,
        "synthetic": False,
        "split_seed": None,
    }
    if kind == "custom":
        info |= {"class_list_hash": "0123456789ab", "standard_mini_imagenet": False, "num_classes": 10}
    return info


def _summary(kind: str, top1: float, **values: Any) -> Summary:
    """summary.json of one evaluation at `top1`, as a baseline writes it; `values` override fields."""
    one_evaluation: dict[str, Any] = {
        "kind": kind,
        "status": "finished",
        "best_val_top1": top1,
        "best_epoch": None,
        "final_val_top1": top1,
        "final_val_top5": 0.97,
        "final_val_loss": 0.5,
        "val_images": 10_000,
        "epochs": 0,
        "params_total": 143_667_240,
        "params_trainable": 0,
        "params_frozen": 143_667_240,
        "wall_seconds": 30.0,
        "train_images_per_sec": None,
        "infer_images_per_sec": 1000.0,
        "peak_memory_bytes": None,
        "device": "cpu",
        "amp": "off",
        "weights_source": VGG19_WEIGHTS,
    }
    return Summary(**(one_evaluation | values))


def _env(gpu: str | None = None) -> dict[str, Any]:
    """env.json as `tlbench.train.env.environment` writes it (the fields the report reads)."""
    return {"python": "3.11.9", "torch": "2.5.1", "timm": "1.0.12", "device": "cpu", "gpu": gpu}


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
    weights_source: str = VGG19_WEIGHTS,
    status: str = "finished",
    params: dict[str, int] | None = None,
    summary: bool = True,
    device: str = "cpu",
    amp: str = "off",
    gpu: str | None = None,
    **recipe_overrides: Any,
) -> Path:
    """A run directory as `tlbench run` writes it, through the RunDir writers: config.json,
    env.json, metrics.csv (one row per value of `val_top1`) and, if finished, summary.json."""
    val_top5 = val_top5 or tuple(min(1.0, v + 0.2) for v in val_top1)
    info = _data_info(data)
    config = run_config(
        backbone,
        recipe,
        freeze=freeze,
        seed=seed,
        data=info["spec"],
        pretrained=weights_source != RANDOM_INIT,
        **({"epochs": len(val_top1)} | recipe_overrides),
    )
    counts = {"backbone": 20_000_000, "head": 100_000} | (
        params or {"total": 20_100_000, "trainable": 9_000_000, "frozen": 11_100_000}
    )
    resolved = Resolved(
        data_info=info,
        classes=[f"n{i:08d}" for i in range(info["num_classes"])],
        weights_source=weights_source,
        device=device,
        amp=amp,
        params=counts,
        preprocessing={"normalize": config.recipe.normalize, "mean": None, "std": None},
        freeze_index=int(freeze) if freeze.isdigit() else None,
        model={"backbone": backbone, "weights_source": weights_source},
    )
    rd = RunDir.create(root / name)
    rd.write_config(RunFile(kind="run", config=config, resolved=resolved))
    rd.write_env(_env(gpu))
    rd.write_metrics(
        EpochMetrics(
            epoch=i + 1,
            train_loss=2.0 - 0.1 * i,
            train_top1=0.4 + 0.1 * i,
            val_loss=1.5 - 0.1 * i,
            val_top1=top1,
            val_top5=top5,
            lr=1e-4,
            epoch_seconds=5.5,
            train_seconds=5.0,
            data_seconds=0.5,
            train_images_per_sec=train_ips,
        )
        for i, (top1, top5) in enumerate(zip(val_top1, val_top5, strict=True))
    )
    if summary:
        best = max(range(len(val_top1)), key=lambda i: val_top1[i])
        run = {
            "status": status,
            "best_epoch": best + 1,
            "epochs": len(val_top1),
            "device": device,
            "amp": amp,
        }
        final = {
            "final_val_top1": val_top1[-1],
            "final_val_top5": val_top5[-1],
            "final_val_loss": final_val_loss,
        }
        speed = {"wall_seconds": wall, "train_images_per_sec": train_ips, "infer_images_per_sec": infer_ips}
        size = {f"params_{k}": counts[k] for k in ("total", "trainable", "frozen")} | {
            "peak_memory_bytes": peak
        }
        summary_values = run | final | speed | size | {"weights_source": weights_source}
        rd.write_summary(_summary("run", val_top1[best], **summary_values))
    return rd.path


def write_baseline(
    root: Path, name: str, top1: float, *, backbone: str = "vgg19", data: str = "imagefolder"
) -> Path:
    """A baseline directory as `tlbench baseline` writes it, through the RunDir writers."""
    info = _data_info(data)
    weights = f"timm hub: timm/{backbone}.tv_in1k"
    resolved = Resolved(
        data_info=info,
        classes=[f"n{i:08d}" for i in range(info["num_classes"])],
        weights_source=weights,
        device="cpu",
        amp="off",
        params={"total": 143_667_240, "trainable": 0, "frozen": 143_667_240},
        preprocessing={"resize": 256, "center_crop": 224, "crop_pct": 0.875, "interpolation": "bilinear"},
        imagenet1k_indices=list(range(info["num_classes"])),
    )
    rd = RunDir.create(root / name)
    config = BaselineConfig(backbone=backbone, data=info["spec"], device="cpu")
    rd.write_config(RunFile(kind="baseline", config=config, resolved=resolved))
    rd.write_env(_env())
    rd.write_summary(_summary("baseline", top1, weights_source=weights))
    return rd.path


def write_predictions(run: Path, right: Sequence[bool], labels: Sequence[int] | None = None) -> Path:
    """predictions.csv through the RunDir writer: image i's label (default i mod 10), predicted as
    that label where `right[i]`, as the next class where not; summary.json's `val_images` (if any)
    becomes their count, as a run writes both."""
    labels = [i % 10 for i in range(len(right))] if labels is None else labels
    rd = RunDir(run)
    rd.write_predictions(
        Prediction(i, y, y if ok else (y + 1) % 10)
        for i, (y, ok) in enumerate(zip(labels, right, strict=True))
    )
    if rd.finished:
        rd.write_summary(replace(rd.read_summary(), val_images=len(right)))
    return run


def _frozen(frozen: int) -> dict[str, int]:
    """Parameter counts of a 20 M backbone + 100 K head with `frozen` of the backbone frozen."""
    return {"total": 20_100_000, "trainable": 20_100_000 - frozen, "frozen": frozen}


class _HtmlTables(HTMLParser):
    """The tables of an HTML page as text: header cells and body rows; every start tag seen; all
    the text."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text = ""
        self.tags: list[str] = []
        self.tables: list[dict[str, list[Any]]] = []
        self._row: list[str] | None = None
        self._header_row = False
        self._cell: list[str] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            self.tables.append({"headers": [], "rows": []})
        elif tag == "tr":
            self._row, self._header_row = [], False
        elif tag in ("th", "td"):
            self._cell = []
            self._header_row |= tag == "th"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if self._header_row:
                table["headers"].extend(self._row)
            else:
                table["rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text += data
        if self._cell is not None:
            self._cell.append(data)


def _markdown_rows(markdown: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the table at the top of a markdown report, as a reader sees the cells
    (backslash escapes and HTML entities decoded)."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    headers, _, *rows = (
        [html.unescape(re.sub(r"\\(.)", r"\1", cell)) for cell in line[2:-2].split(" | ")] for line in lines
    )
    return headers, rows


def _markdown_as_html(markdown: str) -> _HtmlTables:
    """The markdown report as a CommonMark renderer with GitHub's tables shows it."""
    markdown_it = pytest.importorskip("markdown_it")  # rich's own markdown parser
    return _HtmlTables(
        markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)
    )


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
    write_run(tmp_path, "resnet", backbone="resnet50", weights_source="timm hub: timm/resnet50.a1_in1k")
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
    df = aggregate(collect_runs([tmp_path])[0], group_by=["split_seed", "data_info.format", "params.frozen"])
    assert len(df) == 1 and df.iloc[0]["n"] == 2  # config's split_seed, resolved's data_info and params
    assert (df.iloc[0]["split_seed"], df.iloc[0]["data_info.format"]) == (0, "imagefolder")
    assert df.iloc[0]["params.frozen"] == 11_100_000
    with pytest.raises(UsageError, match="cannot group by"):
        aggregate(collect_runs([tmp_path])[0], group_by=["no_such_field"])


def test_bad_run_directories_are_skipped_with_the_reason(tmp_path: Path) -> None:
    good = write_run(tmp_path, "good")
    write_run(tmp_path, "unfinished", summary=False)
    write_run(tmp_path, "failed", status="failed")
    write_run(tmp_path, "bad-config")
    (tmp_path / "bad-config" / "config.json").write_text("[1, 2")
    write_run(tmp_path, "no-config")
    (tmp_path / "no-config" / "config.json").unlink()
    no_top1 = RunDir(write_run(tmp_path, "no-top1"))
    no_top1.write_summary(replace(no_top1.read_summary(), best_val_top1=math.nan))
    write_run(tmp_path, "bad-metrics")
    (tmp_path / "bad-metrics" / "metrics.csv").write_text("epoch,val_top1\n1,0.5\n")
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
    assert reasons["failed"] == "status 'failed'"
    assert reasons["bad-config"].startswith("cannot read") and "config.json" in reasons["bad-config"]
    assert reasons["no-config"].startswith("missing config.json")
    assert "no validation top-1" in reasons["no-top1"]
    assert "metrics.csv has columns" in reasons["bad-metrics"]
    assert reasons["missing"] == "no such file or directory"
    assert len(skipped) == 7


def test_a_damaged_summary_is_skipped_not_a_traceback(tmp_path: Path) -> None:
    write_run(tmp_path, "truncated")
    (tmp_path / "truncated" / "summary.json").write_text('{"status": "finished", "best_val')
    write_run(tmp_path, "a-list")
    (tmp_path / "a-list" / "summary.json").write_text("[0.7]")
    write_run(tmp_path, "incomplete")
    summary = json.loads((tmp_path / "incomplete" / "summary.json").read_text())
    del summary["final_val_top1"]
    (tmp_path / "incomplete" / "summary.json").write_text(json.dumps(summary))
    write_run(tmp_path, "newer")
    (tmp_path / "newer" / "summary.json").write_text(json.dumps(summary | {"final_val_top1": 0.6, "ema": 1}))
    write_run(tmp_path, "nonsense")
    (tmp_path / "nonsense" / "summary.json").write_text(json.dumps(summary | {"final_val_top1": "high"}))
    records, skipped = collect_runs([tmp_path])
    assert records == []
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons["truncated"].startswith(f"cannot read {tmp_path / 'truncated' / 'summary.json'}")
    assert reasons["truncated"].endswith("the folder is damaged or not a tlbench run directory")
    assert "not a JSON object" in reasons["a-list"]
    assert "is incomplete" in reasons["incomplete"] and "final_val_top1" in reasons["incomplete"]
    assert "unknown field(s) ema" in reasons["newer"] and "another tlbench version" in reasons["newer"]
    assert "final_val_top1 holds 'high', not a number" in reasons["nonsense"]


def _old_run_dir(folder: Path, kind: str = "run") -> Path:
    """A run directory as tlbench wrote it before schema 2: one flat config.json, schema_version 1."""
    folder.mkdir(parents=True)
    config: dict[str, Any] = {"schema_version": 1, "backbone": "vgg19", "data_info": _data_info()}
    if kind == "baseline":
        config |= {"kind": "baseline", "weights_source": "timm hub: timm/vgg19.tv_in1k"}
        summary = {"status": "finished", "kind": "baseline", "val_top1": 0.89, "val_top5": 0.98}
    else:
        config |= {"freeze": "11", "seed": 0, "recipe": {"name": "keras-vgg19", "lr": 1e-4}}
        config |= {"device_resolved": "cpu", "amp_resolved": "off", "weights_source": VGG19_WEIGHTS}
        summary = {"status": "finished", "best_val_top1": 0.7, "best_epoch": 2, "final_val_top1": 0.6}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_an_older_schema_is_skipped_naming_the_schema(tmp_path: Path) -> None:
    good = write_run(tmp_path, "new")
    old, old_baseline = _old_run_dir(tmp_path / "old"), _old_run_dir(tmp_path / "old-base", "baseline")
    newer = write_run(tmp_path, "newer")
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps(config | {"schema_version": 3}))
    records, skipped = collect_runs([tmp_path])
    assert [r.path for r in records] == [good]
    reasons = {s.path: s.reason for s in skipped}
    for folder in (old, old_baseline):
        assert reasons[folder] == (
            f"{folder} was written by an older tlbench (run-directory schema 1); this tlbench reads "
            "schema 2. report it with the tlbench that wrote it, or run it again"
        )
    assert "uses run-directory schema 3" in reasons[newer] and "upgrade tlbench" in reasons[newer]


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
    write_run(
        root, "resnet", backbone="resnet50", weights_source="timm hub: timm/resnet50.a1_in1k", val_top1=(0.9,)
    )
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
    tables = _HtmlTables(render(df, "html")).tables
    assert len(tables) == 1 and tables[0]["headers"][0] == "backbone" and "weights" in tables[0]["headers"]
    assert [cells[0] for cells in tables[0]["rows"]] == ["resnet50", "vgg19"]
    with pytest.raises(UsageError):
        render(df, "xlsx")


def test_html_report_has_a_row_per_configuration_and_escapes_text(tmp_path: Path) -> None:
    evil = "file: /w/<script>alert('x')</script>&/resnet50.pth"  # a --weights path, as recorded
    write_run(tmp_path, "none-s0", freeze="none", val_top1=(0.5, 0.7), params=_frozen(0))
    write_run(tmp_path, "none-s1", freeze="none", seed=1, val_top1=(0.6, 0.8), params=_frozen(0))
    write_run(tmp_path, "f11", freeze="11", params=_frozen(5_000_000))
    write_run(tmp_path, "fall", freeze="all", params=_frozen(20_000_000))
    write_run(
        tmp_path, "resnet", backbone="resnet50", freeze="50%", weights_source=evil, params=_frozen(10**7)
    )
    df = aggregate(collect_runs([tmp_path])[0])
    page = render(df, "html")

    parsed = _HtmlTables(page)
    assert "script" not in parsed.tags and "<script>" not in page  # the path is text, not markup
    assert len(parsed.tables) == 1
    headers, rows = parsed.tables[0]["headers"], parsed.tables[0]["rows"]
    assert headers[:3] == ["backbone", "recipe", "freeze (% of backbone frozen)"]
    assert {"weights", "val top-1 % best (n)", "val loss final", "train img/s", "device"} <= set(headers)
    assert len(rows) == len(df) == 4 and all(len(cells) == len(headers) for cells in rows)
    cell = {(cells[0], cells[2]): dict(zip(headers, cells, strict=True)) for cells in rows}
    # depth is the share of the backbone's 20 M parameters frozen
    assert set(cell) == {
        ("resnet50", "50% (50%)"),
        ("vgg19", "none"),
        ("vgg19", "11 (25%)"),
        ("vgg19", "all"),
    }
    assert cell["vgg19", "none"]["val top-1 % best (n)"] == "75.00 ± 7.07 (2)"  # best 0.7 and 0.8
    assert cell["vgg19", "11 (25%)"]["val top-1 % best (n)"] == "70.00 ± - (1)"
    assert cell["resnet50", "50% (50%)"]["weights"] == evil
    assert cell["vgg19", "all"]["recipe"] == "keras-vgg19"
    # the same human table as the markdown report, cell for cell
    assert _markdown_rows(render(df, "markdown")) == (headers, rows)


def test_markdown_report_escapes_text(tmp_path: Path) -> None:
    evil = "file: /w/<script>alert('x')</script>&amp; a|b `c` *d* _e_ ~~f~~ [g](h) $i$ \\/m.pth"
    write_run(tmp_path / "one", "evil", weights_source=evil)  # one row: the path is in the notes
    write_run(tmp_path / "two", "plain")
    write_run(tmp_path / "two", "evil", backbone="resnet50", weights_source=evil)  # in a cell
    for root in (tmp_path / "one", tmp_path / "two"):
        markdown = render(aggregate(collect_runs([root])[0]), "markdown")
        assert "<script>" not in markdown and "&lt;script&gt;" in markdown
        shown = _markdown_as_html(markdown)
        assert shown.tags.count("table") == 1 and not {"script", "code", "em", "a", "s", "del"} & set(
            shown.tags
        )
        if root.name == "one":
            assert f"weights {evil}" in shown.text  # the notes, as a reader sees them
        else:
            table = shown.tables[0]
            assert table == _HtmlTables(render(aggregate(collect_runs([root])[0]), "html")).tables[0]
            assert dict(zip(table["headers"], table["rows"][0], strict=True))["weights"] == evil


def test_plots_show_mathtext_and_markup_as_plain_text(tmp_path: Path) -> None:
    for seed, weights in enumerate(("file: /w/$x_1_2$/m.pth", "file: /w/$\\nope$ [/]/m.pth")):
        write_run(tmp_path, f"r{seed}", seed=seed, weights_source=weights)  # in the legend labels
    records, _ = collect_runs([tmp_path])
    df = aggregate(records)
    assert len(df) == 2
    paths = make_plots(records, df, tmp_path / "plots")
    assert [p.name for p in paths] == list(PLOT_FILES)


def test_print_table(three_seeds: tuple[Path, Any]) -> None:
    from rich.console import Console

    df = aggregate(collect_runs([three_seeds[0]])[0])
    console = Console(record=True, width=400, file=io.StringIO())
    print_table(df, console)
    text = console.export_text()
    assert "vgg19" in text and "(3)" in text and "seen: images+classes" in text


def test_the_terminal_table_fits_120_columns(tmp_path: Path) -> None:
    from rich.console import Console

    from tlbench.report.stats import with_differences

    backbones = {
        "vgg19": VGG19_WEIGHTS,
        "convnext_tiny": "timm hub: timm/convnext_tiny.in12k_ft_in1k",
        "vit_base_patch16_224": "timm hub: timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
    }
    right = [i % 5 != 0 for i in range(200)]  # the same final predictions everywhere: all tie
    for k, (backbone, weights) in enumerate(backbones.items()):
        for freeze, top1 in (("none", (0.5, 0.80 - k / 100)), ("50%", (0.5, 0.70 - k / 100))):
            changed = {"batch_size": 64} if (backbone, freeze) == ("vgg19", "50%") else {}
            for seed in (0, 1):
                name = f"{backbone}-{freeze[:2]}-s{seed}"
                run = write_run(
                    tmp_path, name, backbone=backbone, weights_source=weights, freeze=freeze, seed=seed,
                    val_top1=top1, params=_frozen(0 if freeze == "none" else 10**7), **changed,
                )  # fmt: skip
                write_predictions(run, right)
    write_baseline(tmp_path, "base-vgg19", 0.897)
    records = collect_runs([tmp_path])[0]
    df = with_differences(aggregate(records), records)
    console = Console(record=True, width=120, file=io.StringIO())
    print_table(df, console)
    lines = console.export_text().splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("───"))
    caption = next(i for i, line in enumerate(lines) if line.startswith("[1]"))
    rows = lines[rule + 1 : caption]
    assert len(rows) == len(df) == 6  # one line per configuration: nothing wrapped
    assert all(len(line.rstrip()) <= 120 for line in lines[: caption + 1])
    header = " ".join(lines[1:rule])
    for title in ("backbone", "recipe", "freeze", "best top-1 %", "95% CI", "vs best", "no-train", "wall"):
        assert title in header
    top1 = [
        float(re.search(r"(\d+\.\d+) ± - \(2\)|(\d+\.\d+) ± [\d.]+ \(2\)", r).group(0).split()[0])
        for r in rows
    ]
    assert top1 == sorted(top1, reverse=True) == [80.0, 79.0, 78.0, 70.0, 69.0, 68.0]  # by accuracy
    marked = [r for r in rows if r.startswith("*")]
    assert len(marked) == 3 and all(" none " in r for r in marked)  # the best row of each backbone
    assert "89.70" in rows[0] and sum("best" in r for r in rows) == 1 and sum("tied" in r for r in rows) == 5
    assert not any("batch_size" in r for r in rows) and "keras-vgg19 [1]" in rows[3]
    text = "\n".join(lines)
    assert "[1] the recipe with batch_size=64" in text and "*: the most accurate row" in text
    assert "paired bootstrap over images and seeds" in text  # the method, named under the table

    console = Console(record=True, width=200, file=io.StringIO())
    print_table(df, console, ["backbone", "p", "top5"])
    header = console.export_text().splitlines()[1]
    assert header.split() == ["backbone", "p", "vs", "best", "val", "top-5", "%", "at", "best"]
    console = Console(record=True, width=1000, file=io.StringIO())
    print_table(df, console, wide=True)
    assert {"pretraining saw", "infer img/s", "peak memory", "device"} <= set(
        re.split(r"\s{2,}", console.export_text().splitlines()[1].strip())
    )
    with pytest.raises(UsageError, match="no column 'nope'"):
        print_table(df, console, ["backbone", "nope"])
    with pytest.raises(UsageError, match="terminal table"):
        report([tmp_path], "markdown", columns=["backbone"])


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
    write_run(tmp_path, "resnet", backbone="resnet50", weights_source="timm hub: timm/resnet50.a1_in1k")
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
    base = next(r for r in records if r.path.name == "base-vgg")
    assert (base.recipe, base.freeze, base.seed, base.image_size, base.epochs_done) == (
        "baseline",
        "all",
        None,
        224,
        0,
    )
    assert base.best_val_top1 == base.final_val_top1 == 0.897 and base.best_val_top5 == 0.97
    assert base.params_trainable == 0 and base.leakage == "seen: images+classes" and base.curves == {}


@pytest.mark.parametrize(
    ("weights", "data", "expected"),
    [
        (VGG19_WEIGHTS, "imagefolder", "seen: images+classes"),
        ("timm hub: timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "imagefolder", "seen: images+classes"),
        (VGG19_WEIGHTS, "custom", "classes may overlap"),
        ("none (random init)", "imagefolder", "none"),
        (VGG19_WEIGHTS, "synthetic", "none (synthetic)"),
        ("none (random init)", "synthetic", "none (synthetic)"),
        ("file: /models/mine.safetensors", "imagefolder", "unknown (custom weights)"),
        ("timm hub: timm/vit_base_patch16_clip_224.openai", "imagefolder", "unknown (custom weights)"),
    ],
)
def test_leakage_rule(weights: str, data: str, expected: str) -> None:
    assert leakage_flag(weights, _data_info(data)) == expected


def test_leakage_forms_and_table_column(tmp_path: Path) -> None:
    for fmt in ("ravi-csv", "pickle", "parquet"):
        info = _data_info() | {"format": fmt, "root": f"/data/{fmt}"}
        assert leakage_flag("timm/resnet50.a1_in1k", info) == "seen: images+classes"
    assert leakage_flag("timm/vgg19.tv_in1k", {"spec": "synthetic:10x60@32/parquet"}) == "none (synthetic)"
    write_run(tmp_path, "scratch", weights_source=RANDOM_INIT)
    write_run(tmp_path, "pretrained")
    df = aggregate(collect_runs([tmp_path])[0])
    assert sorted(df["leakage"]) == ["none", "seen: images+classes"]


def test_importing_the_report_does_not_import_torch() -> None:
    code = "import sys, tlbench.report; print(sorted({'torch', 'pandas', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_device_column_names_the_gpu_and_precision(tmp_path: Path) -> None:
    write_run(tmp_path, "gpu", device="cuda:0", amp="bf16", gpu="NVIDIA H200")
    write_run(tmp_path, "cpu", seed=1)
    df = aggregate(collect_runs([tmp_path])[0])
    assert df.iloc[0]["device"] == "NVIDIA H200, bf16, cpu, fp32"  # pooled over two devices: flagged
    (tmp_path / "gpu" / "env.json").write_text("{")
    records, skipped = collect_runs([tmp_path])
    assert [r.path.name for r in records] == ["cpu"] and "env.json" in skipped[0].reason


def _failed_sweep_cell(sweep: Path, cell: str, error: str) -> None:
    """A sweep folder whose state.json records one failed cell (as `tlbench sweep` writes it)."""
    from tlbench._io import write_json
    from tlbench.sweep import CellState

    write_json(sweep / "manifest.json", {"cells": []})
    write_json(sweep / "state.json", {cell: asdict(CellState(status="failed", error=error, exit_code=5))})


def test_report_command(
    three_seeds: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = three_seeds
    _old_run_dir(root / "old")
    _failed_sweep_cell(root / "sweep", "vgg11-keras-vgg19-fall-s0", "vgg11 cannot take 16 px inputs")
    df = report([root], "markdown", group_by=["backbone,recipe.lr"])
    out, err = capsys.readouterr()
    assert df is not None and list(df["n"]) == [3] and "| recipe.lr |" in out.splitlines()[0]
    assert "skipped" in err and "older tlbench (run-directory schema 1)" in err
    assert "vgg11-keras-vgg19-fall-s0: sweep cell failed: vgg11 cannot take 16 px inputs" in err

    report([root], "csv", out=tmp_path / "r.csv")
    out, err = capsys.readouterr()
    assert out == "" and f"wrote {tmp_path / 'r.csv'}" in err
    assert len(pd.read_csv(tmp_path / "r.csv")) == 1

    with pytest.raises(UsageError, match="not one of table"):
        report([root], "xlsx")
    with pytest.raises(UsageError, match="prints to the terminal"):
        report([root], "table", out=tmp_path / "t.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no finished runs or bench results found"):
        report([tmp_path / "empty"], "json")


def test_a_real_run_reads_back_field_by_field(trained_run: Path) -> None:
    """The session's run (conftest: test_resnet from scratch, 8 epochs, seed 3, lr 0.02) as collect_runs
    reads it back, field by field, and as one row of the table."""
    doc = json.loads((trained_run / "config.json").read_text())
    config = doc | doc.get("config", {}) | doc.get("resolved", {})  # schema 2 nests what schema 1 did not
    summary = json.loads((trained_run / "summary.json").read_text())
    metrics = list(pd.read_csv(trained_run / "metrics.csv").to_dict(orient="records"))
    records, skipped = collect_runs([trained_run.parent])
    assert skipped == [] and [r.path for r in records] == [trained_run]
    r = records[0]

    # What the run was asked for, as config.json holds it.
    assert (r.kind, r.status) == ("run", "finished") and summary["status"] == "finished"
    assert (r.backbone, r.recipe, r.freeze, r.seed) == ("test_resnet", "keras-vgg19", "none", 3)
    assert (r.backbone, r.freeze, r.seed) == (config["backbone"], config["freeze"], config["seed"])
    assert (r.image_size, r.epochs) == (32, 8) == (config["recipe"]["image_size"], config["recipe"]["epochs"])
    assert r.recipe_overrides == "lr=0.02"  # augment has a column of its own
    assert r.weights_source == summary["weights_source"] == config["weights_source"] == "none (random init)"
    assert r.device == "cpu, fp32" and (summary["device"], summary["amp"]) == ("cpu", "off")
    assert r.class_list_hash == config["data_info"]["class_list_hash"]
    assert r.synthetic and r.leakage == "none (synthetic)"
    assert r.dataset == "synthetic imagefolder-4x120-32px-s0"

    # What it measured, as summary.json and metrics.csv hold it.
    for name in (
        "best_val_top1",
        "best_epoch",
        "final_val_top1",
        "final_val_top5",
        "final_val_loss",
        "params_total",
        "params_trainable",
        "params_frozen",
        "train_images_per_sec",
        "infer_images_per_sec",
        "peak_memory_bytes",
        "wall_seconds",
    ):
        assert getattr(r, name) == summary[name], name
    assert r.epochs_done == summary["epochs"] == len(metrics) == 8
    assert r.best_val_top1 == pytest.approx(max(m["val_top1"] for m in metrics), abs=1e-6)
    assert r.best_val_top5 == metrics[summary["best_epoch"] - 1]["val_top5"]
    assert r.final_val_top1 == pytest.approx(metrics[-1]["val_top1"], abs=1e-6)
    assert r.train_images_per_sec == pytest.approx(
        statistics.median(m["train_images_per_sec"] for m in metrics), rel=1e-5
    )
    assert r.params_backbone == config["params"]["backbone"] and r.frozen_fraction == 0.0
    assert r.params_total == config["params"]["total"] == r.params_trainable + r.params_frozen
    assert r.curves["val_loss"] == [m["val_loss"] for m in metrics]

    # One configuration, one seed: the table holds the same numbers, and so does its JSON.
    df = aggregate(records)
    rows = json.loads(render(df, "json"))
    assert len(df) == len(rows) == 1
    expected = {
        "backbone": "test_resnet",
        "recipe": "keras-vgg19",
        "recipe_overrides": "lr=0.02",
        "freeze": "none",
        "image_size": 32,
        "epochs": 8,
        "weights_source": "none (random init)",
        "n": 1,
        "seeds": "3",
        "best_val_top1_mean": summary["best_val_top1"],
        "best_val_top1_std": None,
        "best_val_top5_mean": r.best_val_top5,
        "final_val_top1_mean": summary["final_val_top1"],
        "final_val_loss_mean": summary["final_val_loss"],
        "final_val_loss_std": None,
        "params_trainable": summary["params_trainable"],
        "params_total": summary["params_total"],
        "frozen_fraction": 0.0,
        "epochs_done": 8,
        "stopped_early": 0,
        "train_images_per_sec": summary["train_images_per_sec"],
        "infer_images_per_sec": summary["infer_images_per_sec"],
        "peak_memory_bytes": summary["peak_memory_bytes"],
        "wall_seconds": summary["wall_seconds"],
        "device": "cpu, fp32",
        "leakage": "none (synthetic)",
        "run_dirs": str(trained_run),
    }
    assert {k: rows[0][k] for k in expected} == expected
    assert {k: (None if pd.isna(v) else v) for k, v in df.iloc[0][list(expected)].items()} == expected


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("epochs", "2", "epochs holds '2', not an integer"),
        ("peak_memory_bytes", "2147483648", "peak_memory_bytes holds '2147483648', not an integer"),
        ("wall_seconds", True, "wall_seconds holds True, not a number"),
        ("params_total", [1], "params_total holds [1], not an integer"),
    ],
)
def test_summary_numbers_stored_as_text_are_skipped_with_a_note_in_every_format(
    cli, tmp_path: Path, field: str, value: Any, words: str
) -> None:
    """A configuration with another seed whose summary.json holds `"epochs": "2"` once made the
    table, csv and page fail (`'<' not supported`); the record is refused when read, with a note."""
    root = tmp_path / "runs"
    write_run(root, "s0", seed=0)
    bad = write_run(root, "s1", seed=1)
    values = json.loads((bad / "summary.json").read_text())
    (bad / "summary.json").write_text(json.dumps(values | {field: value}))
    records, skipped = collect_runs([root])
    assert [r.path.name for r in records] == ["s0"]
    assert [s.path.name for s in skipped] == ["s1"] and words in skipped[0].reason
    for fmt in ("table", "csv", "html"):
        out = () if fmt == "table" else ("--out", tmp_path / f"r.{fmt}")
        code, _, err = cli("report", root, "--format", fmt, *out)
        assert code == 0 and "Traceback" not in err, err
        assert "s1" in err and words in " ".join(err.split()), err


def test_config_values_of_the_wrong_type_are_skipped_not_compared(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "s0", seed=0)
    bad = write_run(root, "s1", seed=1)
    values = json.loads((bad / "config.json").read_text())
    values["config"]["seed"] = "1"
    (bad / "config.json").write_text(json.dumps(values))
    records, skipped = collect_runs([root])
    assert [r.path.name for r in records] == ["s0"]
    assert "(config): seed holds '1', not an integer" in skipped[0].reason
