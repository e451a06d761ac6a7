"""The manual keeps its promises: the Python API page's example runs as written, README.md stays a
short front door, and every relative link in README.md and docs/ points to a file (and heading) that
exists. `mkdocs build --strict` (`./dev docs`) checks the rendered site; these checks need no mkdocs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
TESTED = "<!-- tested: tests/test_docs.py -->"
"""Marks the one complete example of a page: the fenced ```python block right after it."""
README_MAX_LINES = 250

_FENCED = re.compile(r"^( *)(```|~~~).*?^\1\2[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def marked_example(page: Path) -> str:
    """The fenced python block that follows the `TESTED` mark (there must be exactly one)."""
    text = page.read_text(encoding="utf-8")
    assert text.count(TESTED) == 1, f"{page.name} must mark exactly one example with {TESTED}"
    block = re.match(r"\s*```python\n(.*?)\n```", text.split(TESTED, 1)[1], re.S)
    assert block, f"{page.name}: no ```python block right after {TESTED}"
    return block.group(1)


def test_the_python_api_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    code = marked_example(DOCS / "python-api.md")
    monkeypatch.chdir(tmp_path)  # the example's results/runs/ lands here (data and cache: conftest)
    namespace: dict[str, object] = {"__name__": "python_api_example"}
    exec(compile(code, str(DOCS / "python-api.md"), "exec"), namespace)

    run_dir = Path(str(namespace["run_dir"]))
    assert (tmp_path / run_dir / "summary.json").is_file()
    df = namespace["df"]
    assert len(df) == 1  # type: ignore[arg-type]
    row = df.iloc[0]  # type: ignore[attr-defined]
    assert row["backbone"] == "test_resnet" and row["recipe"] == "timm-ft" and row["n"] == 1
    assert 0.0 <= row["best_val_top1_mean"] <= 1.0
    assert list(namespace["metrics"]["epoch"]) == [1]  # type: ignore[index]
    out = capsys.readouterr().out
    assert "test_resnet" in out and "best top-1" in out
    model = namespace["model"]
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 32, 32))  # type: ignore[operator]
    assert tuple(logits.shape) == (2, 4)  # the data set's 4 classes


def test_the_readme_is_a_short_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < README_MAX_LINES
    assert "## Quick start" in text and "./dev demo" in text and "./dev tests" in text
    for word in ("run", "sweep", "report", "bench"):
        assert f"tlbench {word}" in text


def github_slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it (mkdocs' own is checked by its strict build)."""
    text = _INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = _FENCED.sub("", page.read_text(encoding="utf-8"))
    return {github_slug(h) for h in _HEADING.findall(text)}


def relative_links(page: Path) -> list[str]:
    """The link and image targets of a page that point into the repository (code is skipped)."""
    text = _INLINE_CODE.sub("", _FENCED.sub("", page.read_text(encoding="utf-8")))
    return [t for t in _LINK.findall(text) if not _SCHEME.match(t) and not t.startswith("//")]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    links = relative_links(page)
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with the anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_docs_pages_link_the_readme_and_the_site_together() -> None:
    """Every page of docs/ is reachable from README.md, and docs/ holds the page it shows."""
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    pages = {p.resolve() for p in DOCS.glob("*.md")}
    assert pages <= linked, f"not linked from README.md: {sorted(p.name for p in pages - linked)}"
    assert (DOCS / "report-page.png").resolve() in linked
