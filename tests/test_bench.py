"""`tlbench bench`: the measurement, the out-of-memory retry, MFU, the per-backbone processes, the files.

Everything runs on the CPU with tiny models (timm's `test_resnet`, VGG19 at 32 px for FLOPs only)
and a couple of steps, so the numbers are meaningless; what is checked is their bookkeeping.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tlbench.bench import BenchOptions, parse_backbones
from tlbench.bench import measure as measure_mod
from tlbench.bench.measure import COLUMNS
from tlbench.bench.peaks import match_gpu, mfu, peak_flops
from tlbench.bench.runner import run_bench, run_bench_command
from tlbench.bench.timing import count_flops, halve_on_oom
from tlbench.bench.worker import measure_backbone, run_one
from tlbench.errors import ConfigError, ModelError, UsageError

FAST = {"device": "cpu", "batch_size": 8, "image_size": 32, "warmup": 1, "steps": 2, "repeats": 2}


def _opts(**overrides: Any) -> BenchOptions:
    return BenchOptions(**{**FAST, **overrides})


@pytest.fixture(scope="module")
def row() -> dict[str, Any]:
    """One full measurement (train + baseline + infer) of test_resnet, shared by several tests."""
    return measure_backbone("test_resnet", _opts())


def test_row_fields_and_arithmetic(row: dict[str, Any]) -> None:
    assert list(row) == list(COLUMNS)  # every column, in order, in every row
    assert row["status"] == "ok"
    assert row["amp_why"].startswith(f"{row['amp']}: ")  # why this precision (auto: what the CPU has)
    for mode in ("train", "infer"):
        batch, ms, sps = row[f"{mode}_batch_size"], row[f"{mode}_step_ms"], row[f"{mode}_samples_per_sec"]
        assert batch == 8
        assert ms > 0 and sps > 0
        assert sps == pytest.approx(batch / (ms / 1000), rel=1e-9)
        assert row[f"{mode}_step_time"] == ms  # timm's column name for the same milliseconds
        assert row[f"{mode}_img_size"] == 32
        assert len(row[f"{mode}_step_ms_runs"]) == 2
        assert ms == pytest.approx(sum(row[f"{mode}_step_ms_runs"]) / 2)  # median of 2 repeats
    # FLOPs are counted; a train step is a forward plus a backward (~3x the forward).
    assert row["infer_gflops"] > 0
    assert row["infer_gmacs"] == pytest.approx(row["infer_gflops"] / 2)
    assert 2.0 * row["infer_gflops"] < row["train_gflops"] < 3.5 * row["infer_gflops"]
    # The plain-loop baseline is measured beside it and the ratio is of the two speeds.
    assert row["baseline_samples_per_sec"] > 0
    assert row["baseline_samples_per_sec"] == pytest.approx(8 / (row["baseline_step_ms"] / 1000))
    # tlbench speed / plain speed within each repeat (the two run back to back), median over repeats.
    pairs = zip(row["baseline_step_ms_runs"], row["train_step_ms_runs"], strict=True)
    ratios = [base / ours for base, ours in pairs]
    assert row["train_vs_baseline"] == pytest.approx(sum(ratios) / 2)  # the median of 2
    # Settings and versions that change the numbers are in the row.
    # The defaults are `tlbench run`'s (`tlbench.speed`, `runtime.choose_amp`): NCHW and eager on the
    # CPU, bf16 where PyTorch says the CPU has AMX or AVX512-BF16.
    from tlbench import runtime

    precision = runtime.precision_name(runtime.resolve_amp("auto", torch.device("cpu")))
    assert row["precision"] == precision and row["device"] == "cpu" and row["memory_format"] == "contiguous"
    assert row["compile"] is False and row["compiled"] is False
    assert row["recipe"] == "keras-vgg19" and row["optimizer"] == "sgd"
    assert row["torch"] == torch.__version__ and row["timm"]
    assert row["params_total"] == row["params_trainable"] + row["params_frozen"]
    assert row["param_count"] == pytest.approx(row["params_total"] / 1e6, abs=0.01)
    json.dumps(row, allow_nan=False)  # valid JSON


def test_no_mfu_on_cpu(row: dict[str, Any]) -> None:
    assert row["gpu_peak"] is None and row["peak_tflops"] is None
    assert row["train_mfu"] is None and row["infer_mfu"] is None
    assert row["train_peak_mem_mb"] is None  # CUDA allocator peak; the process RSS is reported instead
    assert row["max_rss_mb"] > 0


def test_mfu_from_a_fake_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure_mod, "device_peak", lambda device, name, precision: 2.0e12)
    r = measure_backbone("test_resnet", _opts(mode="infer"))
    expected = r["infer_gflops"] * 1e9 * r["infer_samples_per_sec"] / 2.0e12
    assert r["infer_mfu"] == pytest.approx(expected)
    assert r["peak_tflops"] == pytest.approx(2.0)
    assert r["train_samples_per_sec"] is None and r["train_mfu"] is None  # not run in infer mode


def test_peak_table_and_mfu_arithmetic() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989e12)
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12)
    assert peak_flops("NVIDIA H200", "fp32") == pytest.approx(67e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp16") == pytest.approx(312e12)
    assert peak_flops("NVIDIA GeForce RTX 4090", "fp32") == pytest.approx(82.6e12)
    assert peak_flops("NVIDIA L4", "bf16") == pytest.approx(121e12)
    assert match_gpu("NVIDIA L40S") is None  # "L4" must not match the L40 family
    assert peak_flops("AMD EPYC", "fp32") is None and peak_flops(None, "bf16") is None
    # The README's example: 72 GFLOP per image at 8,000 images/s on a 989 TFLOP/s H100.
    assert mfu(72e9, 8000, 989e12) == pytest.approx(72e9 * 8000 / 989e12)
    assert mfu(72e9, 8000, 989e12) == pytest.approx(0.5824, abs=1e-4)
    assert mfu(72e9, 8000, None) is None and mfu(None, 8000, 1e12) is None
    with pytest.raises(ValueError):
        peak_flops("NVIDIA H100", "int8")


def test_frozen_prefix_costs_no_backward_flops() -> None:
    from tlbench.models import build_model

    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    flops = {}
    for freeze in ("none", "11"):
        model = build_model("vgg19", 100, freeze=freeze, pretrained=False, image_size=32)
        flops[freeze] = (count_flops(model, x, y, train=True), count_flops(model, x, y, train=False))
    assert flops["11"][1] == flops["none"][1]  # the same forward
    assert flops["11"][0] < flops["none"][0]
    # Blocks 1-3 are ~57 % of VGG19's forward: freezing them saves their backward, ~40 % of a step
    # (REFERENCE.md: ~72 vs ~118 GFLOP per image at 224 px; the ratio does not depend on the size).
    assert 0.55 < flops["11"][0] / flops["none"][0] < 0.65


def test_oom_halves_the_batch_until_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.train.step import TrainStep

    real_train, real_infer = TrainStep.__call__, measure_mod.infer_step
    seen: list[int] = []

    def train_step(step: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_train(step, x, y)

    def infer(runner: Any, x: torch.Tensor, *args: Any) -> None:
        if len(x) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        real_infer(runner, x, *args)

    monkeypatch.setattr(TrainStep, "__call__", train_step)
    monkeypatch.setattr(measure_mod, "infer_step", infer)
    with pytest.warns(UserWarning, match="out of memory at batch [84]"):
        r = measure_backbone("test_resnet", _opts(baseline_loop=False))
    assert seen[:3] == [8, 4, 2]
    assert r["batch_size"] == 8  # asked for
    assert r["train_batch_size"] == 2 and r["infer_batch_size"] == 4  # used
    assert r["train_samples_per_sec"] == pytest.approx(2 / (r["train_step_ms"] / 1000))
    assert r["baseline_samples_per_sec"] is None


def test_oom_at_batch_one_gives_up() -> None:
    calls: list[int] = []

    def run(batch: int) -> dict[str, Any]:
        calls.append(batch)
        raise torch.OutOfMemoryError("simulated")

    with pytest.warns(UserWarning), pytest.raises(torch.OutOfMemoryError, match="even at batch 1"):
        halve_on_oom(run, 6, "x")
    assert calls == [6, 3, 1]


def test_compile_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(model: torch.nn.Module, **kwargs: Any) -> Any:
        def call(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C++ compiler (simulated)")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="cannot compile"):
        r = measure_backbone("test_resnet", _opts(mode="infer", compile=True))
    assert r["status"] == "ok" and r["compile"] is True and r["compiled"] is False
    assert "no C++ compiler" in r["compile_error"]
    assert r["infer_samples_per_sec"] > 0


def test_data_pipeline_mode(synth_sets: dict[str, Path]) -> None:
    r = measure_backbone(
        "test_resnet", _opts(mode="train", baseline_loop=False, data=str(synth_sets["imagefolder"]))
    )
    assert r["data_samples_per_sec"] > 0 and r["pipeline_samples_per_sec"] > 0
    assert r["data_samples_per_sec"] == pytest.approx(r["data_batch_size"] / (r["data_step_ms"] / 1000))
    expected = r["pipeline_samples_per_sec"] / r["train_samples_per_sec"]
    assert r["pipeline_vs_step"] == pytest.approx(expected)
    assert r["bound"] in ("data", "step") and r["data_placement"] == "cpu"


def test_options_are_checked() -> None:
    with pytest.raises(UsageError):
        BenchOptions(mode="fast").validate()
    with pytest.raises(UsageError):
        BenchOptions(amp="int8").validate()
    with pytest.raises(UsageError):
        BenchOptions(data="x", mode="infer").validate()
    with pytest.raises(UsageError):
        BenchOptions.from_dict({"batchsize": 3})
    # the one schema of tlbench.options: an error names the field (the CLI names the flag)
    for bad, message in (
        ({"image_size": 8}, "image_size 8 must be in [16, 1024]"),
        ({"batch_size": 0}, "batch_size 0 must be at least 1"),
        ({"warmup": -1}, "warmup -1 must not be negative"),
        ({"repeats": 0}, "repeats 0 must be at least 1"),
        ({"amp": "int8"}, "amp 'int8' is not one of auto, bf16, fp16, off"),
    ):
        with pytest.raises(ConfigError) as exc:
            BenchOptions(**bad)
        assert str(exc.value).startswith(message)
    assert BenchOptions().recipe == "keras-vgg19" and BenchOptions(warmup=0).warmup == 0
    assert parse_backbones(" vgg19, resnet50 ,") == ["vgg19", "resnet50"]
    with pytest.raises(UsageError):
        parse_backbones(" , ")


def test_unknown_backbone_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown backbone 'resnet_nope'") as exc:
        run_bench(["test_resnet", "resnet_nope"], _opts(out=str(tmp_path)), progress=False)
    assert exc.value.exit_code == 5 and "tlbench backbones" in exc.value.one_line()
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_worker_reports_failures_as_rows() -> None:
    bad = run_one({"backbone": "test_resnet", "batchsize": 3})
    assert bad["status"] == "failed" and bad["exit_code"] == 2 and "batchsize" in bad["error"]
    small = run_one({"backbone": "vgg19", **FAST, "image_size": 16})  # VGG needs 32 px or more
    assert small["status"] == "failed" and small["error_type"] == "ModelError" and small["exit_code"] == 5


def test_runner_records_a_failed_backbone_and_finishes_the_others(tmp_path: Path) -> None:
    # vgg19 fails in its child process (it needs >= 32 px); test_resnet, measured after it, is fine.
    options = _opts(image_size=16, mode="infer", amp="off", channels_last="on", out=str(tmp_path / "res"))
    rows = run_bench(["vgg19", "test_resnet"], options, progress=False)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    failed, ok = rows
    assert failed["error_type"] == "ModelError" and "32 px" in failed["error"]
    assert failed["image_size"] == 16 and failed["freeze"] == "none"  # the settings asked for
    assert ok["infer_samples_per_sec"] > 0 and ok["infer_img_size"] == 16

    # CSV and JSON beside each other, named by device, precision, layout and compile mode.
    csv_path, json_path = Path(ok["csv"]), Path(ok["json"])
    assert csv_path.parent == json_path.parent == tmp_path / "res"
    assert csv_path.name.endswith("-cpu-fp32-nhwc-eager.csv") and json_path.suffix == ".json"
    with csv_path.open() as f:
        lines = list(csv.DictReader(f))
    assert [r["model"] for r in lines] == ["vgg19", "test_resnet"]
    assert [r["status"] for r in lines] == ["failed", "ok"]
    good = lines[1]
    for key in ("precision", "memory_format", "compile", "batch_size", "infer_batch_size", "torch", "timm"):
        assert good[key] != "", key
    assert good["precision"] == "fp32" and good["memory_format"] == "channels_last" and good["torch"]
    assert math.isclose(float(good["infer_samples_per_sec"]), ok["infer_samples_per_sec"], rel_tol=1e-5)
    saved = json.loads(json_path.read_text())
    assert saved["options"]["image_size"] == 16 and saved["options"]["mode"] == "infer"
    assert [r["status"] for r in saved["rows"]] == ["failed", "ok"]
    assert not list((tmp_path / "res").glob(".*.tmp"))  # written atomically, nothing left over


def test_bench_cli_json_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlbench.bench import runner

    def fake_child(backbone: str, options: BenchOptions) -> dict[str, Any]:  # no process: plumbing only
        if backbone == "vgg19":
            return {"model": backbone, "status": "failed", "error": "boom", "exit_code": 5}
        return {"model": backbone, "status": "ok", "device": "cpu", "precision": "fp32", "freeze": "none"}

    monkeypatch.setattr(runner, "run_child", fake_child)
    code = run_bench_command("test_resnet", _opts(out=str(tmp_path / "r.json")), as_json=True, quiet=False)
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows[0]["status"] == "ok"
    assert (tmp_path / "r.json").is_file() and (tmp_path / "r.csv").is_file()
    code = run_bench_command(
        "test_resnet,vgg19", _opts(out=str(tmp_path / "t.csv")), as_json=False, quiet=True
    )
    captured = capsys.readouterr()
    assert code == 5 and captured.out == ""  # the table goes to stderr
    assert "test_resnet" in captured.err and "vgg19 failed" in captured.err


def test_a_bad_value_names_the_flag(cli, tmp_path: Path) -> None:
    code, _, err = cli("bench", "test_resnet", "--image-size", "8", "--out", tmp_path / "b")
    assert code == 2 and "tlbench: error: --image-size 8 must be in [16, 1024]" in err, err
    code, _, err = cli(
        "bench", "test_resnet", "--mode", "infer", "--data", "synthetic", "--out", tmp_path / "b"
    )
    assert code == 2 and "--data times the training pipeline" in err, err
    assert not (tmp_path / "b").exists()


def test_report_shows_bench_results(cli, tmp_path: Path) -> None:
    code, _, err = cli(
        "bench",
        "test_resnet",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--repeats",
        "2",
        "--device",
        "cpu",
        "--out",
        tmp_path / "bench",
        "-q",
    )
    assert code == 0, err
    code, out, err = cli("report", tmp_path / "bench", "--format", "markdown")
    assert code == 0, err
    header, _, row = out.splitlines()[:3]
    assert "train img/s" in header and "vs plain loop" in header and row.startswith("| test_resnet | none |")
    code, out, _ = cli("report", tmp_path / "bench", "--format", "json")
    rows = json.loads(out)
    assert rows[0]["model"] == "test_resnet" and rows[0]["train_samples_per_sec"] > 0


def test_an_out_that_is_a_folder_is_refused_before_anything_is_measured(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlbench.bench import runner

    def no_child(backbone: str, options: BenchOptions) -> dict[str, Any]:
        raise AssertionError("measured although the output cannot be written")

    monkeypatch.setattr(runner, "run_child", no_child)
    (tmp_path / "X.csv").mkdir()
    code, out, err = cli("bench", "test_resnet", "--device", "cpu", "--out", tmp_path / "X.csv")
    assert code == 6 and out == "" and "Traceback" not in err
    assert err == (
        f"tlbench: error: --out {tmp_path / 'X.csv'} is a folder, where the results file goes. "
        "give a new file name ending in .csv or .json, or a folder name without one\n"
    )
    (tmp_path / "Y.json").mkdir()  # the .json written beside a .csv name
    code, _, err = cli("bench", "test_resnet", "--device", "cpu", "--out", tmp_path / "Y.csv")
    assert code == 6 and f"--out {tmp_path / 'Y.json'} is a folder" in err
    (tmp_path / "file").write_text("")
    code, _, err = cli("bench", "test_resnet", "--device", "cpu", "--out", tmp_path / "file")
    assert code == 6 and f"--out {tmp_path / 'file'} is a file, not a folder" in err


@pytest.mark.parametrize("as_json", [True, False])
def test_rows_are_printed_before_the_files_so_a_failed_write_loses_nothing(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    from tlbench.bench import runner

    out = tmp_path / "r.csv"

    def child_then_sabotage(backbone: str, options: BenchOptions) -> dict[str, Any]:
        out.mkdir()  # a folder appears where the results file goes while the benchmark runs
        return {
            "model": backbone,
            "status": "ok",
            "device": "cpu",
            "precision": "fp32",
            "train_step_ms": 12.5,
        }

    monkeypatch.setattr(runner, "run_child", child_then_sabotage)
    code, stdout, err = cli("bench", "test_resnet", "--device", "cpu", "--out", out, *(["--json"] * as_json))
    assert code == 6 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith(f"tlbench: error: cannot write {out}")
        and "(the 1 measured row(s) are printed above)" in last
    )
    assert json.loads(stdout)[0]["train_step_ms"] == 12.5  # every field (the table may cut them short)
    assert ("backbone" in err) != as_json  # the table, on stderr, unless --json
