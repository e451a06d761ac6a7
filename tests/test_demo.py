"""`tlbench demo` end to end, at a tiny size: two runs, a report page, and closing lines that say why
the recipes differ and where the page is."""

from __future__ import annotations

import json
from pathlib import Path

from tlbench.demo import DEMO_RECIPES

TINY = ["--epochs", "1", "--image-size", "16", "--data", "synthetic:3x12@16"]


def test_demo_compares_two_recipes_and_writes_the_page(cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, _, err = cli("demo", *TINY, "--out", out)
    assert code == 0, err
    for recipe in DEMO_RECIPES:
        summary = json.loads((out / recipe / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert summary["weights_source"].startswith("none")  # offline (conftest): from scratch
    page = out / "report.html"
    assert "timm-ft" in page.read_text() and "keras-vgg19" in page.read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "both runs train from scratch" in err  # the one offline line
    assert lines[-2].startswith("why: from random weights the step size decides")
    assert lines[-1] == f"report page: {page}"


def test_demo_never_overwrites(cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "report.html").write_text("earlier results")
    code, _, err = cli("demo", *TINY, "--out", out)
    assert code != 0 and "already exists" in err
    assert (out / "report.html").read_text() == "earlier results"
