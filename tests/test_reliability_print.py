"""User text is printed as text: paths, names and errors with `[/]` or `$...$` in them (issue 10, item 14)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tlbench._console import console, plain, say

AWKWARD = "a[/]b $x$ [bold]"  # rich markup, mathtext and a tag that is not closed


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared stderr console, wide enough that no path in these tests is wrapped (rich reads
    COLUMNS when the console is made; the `cli` fixture makes a fresh one per call)."""
    monkeypatch.setenv("COLUMNS", "1000")
    console.cache_clear()


def test_say_and_plain_print_markup_literally(capsys: pytest.CaptureFixture[str], wide_console: None) -> None:
    say(("skipped", "yellow"), f" {AWKWARD}: [red]broken[/]", soft_wrap=True)
    say(AWKWARD, style="dim")
    console().print(plain(AWKWARD, "bold"))
    err = capsys.readouterr().err
    assert err.splitlines() == [f"skipped {AWKWARD}: [red]broken[/]", AWKWARD, AWKWARD]


def test_bench_lines_and_table_show_names_and_errors_literally() -> None:
    from rich.console import Console

    from tlbench.bench.runner import _one_line, print_table

    failed = {"model": "m[/]", "freeze": "[x]", "status": "failed", "error": "bad [/] thing"}
    ok = {"status": "ok", "train_samples_per_sec": 10.0, "train_batch_size": 2, "warnings": ["w [/]"]}
    record = Console(record=True, width=300, file=io.StringIO())
    record.print(_one_line(failed, "bench 1/2: m[/]"))
    record.print(_one_line(ok, "bench 2/2: n"))
    assert record.export_text().splitlines() == [
        "bench 1/2: m[/]: failed: bad [/] thing",
        "bench 2/2: n: train 10.0 img/s (batch 2)",
        "  warning: w [/]",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tlbench.bench.runner.console", lambda: record)
        mp.setattr("tlbench._console.console", lambda: record)
        print_table([failed])
    text = record.export_text()
    assert "m[/]" in text and "[x]" in text and "m[/] failed: bad [/] thing" in text


def test_a_run_in_an_awkward_folder_finishes_and_reports(tmp_path: Path, cli, wide_console: None) -> None:
    out = tmp_path / "a[/]b $x$"
    code, _, err = cli(
        *("run", "test_resnet", "--recipe", "keras-vgg19", "--freeze", "none"),
        *("--data", "synthetic:4x24@32", "--image-size", "32", "--no-pretrained"),
        *("--device", "cpu", "--epochs", "1", "--out", out),
    )
    assert code == 0, err
    assert (out / "summary.json").is_file()
    assert f"run {out}\n" in err  # above the summary table: the path as it is, on one line
    broken = tmp_path / "broken [/]x"  # a folder that is not a run: skipped, and named literally
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{")

    code, _, err = cli("report", tmp_path)
    assert code == 0, err
    assert "test_resnet" in err and f"skipped {broken}: " in err
    plots = tmp_path / "plots $y$ [/]"
    code, _, err = cli("report", tmp_path, "--plots", plots)
    assert code == 0, err
    assert f"plot {plots / 'val_top1_curves.png'}" in err
    code, out_md, err = cli("report", out, "--format", "markdown")
    assert code == 0 and "| test_resnet |" in out_md, err
