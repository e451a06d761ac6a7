"""`tlbench report --format html`: one self-contained page, read two ways: parsed, and rendered in a
real browser (headless Chromium: loads, draws something, sorts on a header click)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_report import PNG_MAGIC, _old_run_dir, write_baseline, write_predictions, write_run

from tlbench.errors import UsageError
from tlbench.report.command import report
from tlbench.rundir import ClassRow, RunDir

EVIL = "<script>alert('x')</script>&amp;\"'"
"""User text (a weights path, a class name, a folder name) that must stay text."""

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class Page(HTMLParser):
    """A page as a browser's parser sees it: every tag with its attributes, the text, and the
    summary table's rows (their ids and cells) in document order."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text = ""
        self.rows: list[dict[str, Any]] = []
        self._in_summary = self._in_script = False
        self._cell: list[str] | None = None
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.append((tag, values))
        self._in_script |= tag == "script"
        if tag == "table":
            self._in_summary = values.get("id") == "summary"
        elif tag == "tr" and self._in_summary and values.get("id"):
            self.rows.append({"attrs": values, "cells": []})
        elif tag == "td" and self._in_summary:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._in_summary = False
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.text += data
        if self._cell is not None:
            self._cell.append(data)

    def attrs(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]

    @property
    def order(self) -> list[str]:
        """The summary rows' ids, top to bottom."""
        return [str(r["attrs"]["id"]) for r in self.rows]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three configurations (two seeds, one, one), a baseline, a skipped folder, user text with
    markup in a folder name, a weights path and the class names; the page written by the command."""
    root = tmp_path_factory.mktemp("page") / f"runs {EVIL.replace('/', '')}"
    images = 200
    runs = {
        "vgg-none-s0": {"freeze": "none", "seed": 0, "val_top1": (0.6, 0.9), "wrong": 10},
        "vgg-none-s1": {"freeze": "none", "seed": 1, "val_top1": (0.6, 0.9), "wrong": 10},
        "vgg-all": {"freeze": "all", "val_top1": (0.7, 0.8), "wrong": 5},
        "resnet": {"backbone": "resnet50", "freeze": "50%", "val_top1": (0.5, 0.6), "wrong": 3},
    }
    paths = {}
    for name, options in runs.items():
        every = options.pop("wrong")
        weights = {"weights_source": f"file: /w/{EVIL}/resnet50.pth"} if name == "resnet" else {}
        path = write_run(root, name, **options, **weights)
        write_predictions(path, [i % every != 0 for i in range(images)])
        RunDir(path).write_per_class(ClassRow(c, f"n{c:08d}{EVIL}", 18, 20, 0.9 - c / 100) for c in range(10))
        paths[name] = path
    RunDir(paths["resnet"]).write_env(
        {"tlbench": "0.1.0", "tlbench_commit": "abc1234", "torch": "2.5.1", "device": "cuda:0", "gpu": "H200"}
    )
    write_baseline(root, "base-vgg19", 0.897)
    _old_run_dir(root / "old")
    out = root.parent / "report.html"
    df = report([root], "html", out=out)
    assert df is not None
    return {"root": root, "paths": paths, "out": out, "source": out.read_text(), "df": df}


def test_the_page_holds_every_configuration_and_run(written: dict[str, Any]) -> None:
    page, df = Page(written["source"]), written["df"]
    assert len(page.rows) == len(df) == 3
    assert [r["cells"][0] for r in page.rows] == ["vgg19", "vgg19", "resnet50"]  # best val top-1 first
    assert {str(a.get("data-key")) for a in page.attrs("th")} >= {"backbone", "top1", "ci", "vs_best", "wall"}
    sections = {a.get("id") for a in page.attrs("section")}
    assert sections == {f"config-{i}" for i in range(3)}
    for path in written["paths"].values():
        assert str(path) in page.text  # each run directory, named in its section
    assert "seed 0" in page.text and "seed 1" in page.text  # per-class accuracy, per seed
    # the notes: baseline, leakage, the skipped folder and why, the tests by name
    assert "baseline vgg19 on imagefolder: top-1 89.70 %" in page.text
    assert "seen: images+classes" in page.text
    assert f"skipped {written['root'] / 'old'}: " in page.text and "older tlbench" in page.text
    assert "exact McNemar test" in page.text or "paired bootstrap" in page.text
    assert "seed variance is unmeasured" in page.text
    # the environment of every run: versions, device, commit
    assert "abc1234" in page.text and "2.5.1" in page.text and "H200" in page.text
    assert page.text.count("environment ") == 2  # two distinct env.json


def test_every_value_is_escaped(written: dict[str, Any]) -> None:
    source, page = written["source"], Page(written["source"])
    assert "<script>alert" not in source
    assert [a for a in page.attrs("script")] == [{}]  # the page's own inline script, nothing else
    assert f"file: /w/{EVIL}/resnet50.pth" in page.text  # the weights path, as written
    assert f"n00000003{EVIL}" in page.text  # a class name
    assert str(written["paths"]["resnet"]) in page.text  # a folder name with markup in it
    backbones = {r["attrs"]["data-backbone"] for r in page.rows}
    assert backbones == {"vgg19", "resnet50"}


def test_the_page_needs_nothing_from_outside(written: dict[str, Any]) -> None:
    page = Page(written["source"])
    assert not page.attrs("link") and not page.attrs("iframe")
    csp = [a for a in page.attrs("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in str(csp[0]["content"])
    for _, attrs in page.tags:
        assert str(attrs.get("href", "#")).startswith("#")
        assert "src" not in attrs or str(attrs["src"]).startswith("data:image/png;base64,")
    images = page.attrs("img")
    assert len(images) == 4 + 3  # the comparison figures, and the curves of each configuration
    for image in images:
        png = base64.b64decode(str(image["src"]).split(",", 1)[1])
        assert png[:8] == PNG_MAGIC and len(png) > 5000


def test_the_cli_writes_and_opens_the_page(
    written: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    out = tmp_path / "r.html"
    code, _, err = cli("report", written["root"], "--open", "--out", out)
    assert code == 0 and opened == [out.resolve().as_uri()] and f"wrote {out}" in err
    assert Page(out.read_text()).rows
    code, stdout, _ = cli("report", written["root"], "--format", "html")
    assert code == 0 and stdout.startswith("<!DOCTYPE html>")
    with pytest.raises(UsageError, match="--open shows the html page"):
        report([written["root"]], "csv", open_page=True)


# -- in a real browser ----------------------------------------------------------------------------


def _browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    pytest.skip("no Chromium to render the page in (CI installs it: apt-get install chromium)")


class Chromium:
    """One headless Chromium, started once for this module's browser tests and driven over the
    DevTools protocol on a pipe (`--remote-debugging-pipe`: it reads commands on its fd 3 and writes
    answers and events on its fd 4, each a JSON object ending in a NUL byte). Each page opens in a
    tab of its own, `WIDTH` x `HEIGHT`, and is read once its load event has fired (as `--dump-dom`
    and `--screenshot` read it)."""

    WIDTH, HEIGHT = 1280, 1600
    TIMEOUT_S = 60.0

    def __init__(self, executable: str, profile: Path) -> None:
        commands_r, self._commands = os.pipe()
        self._answers, answers_w = os.pipe()
        self.log = profile / "chromium.log"
        command = [executable, *BROWSER_FLAGS, f"--user-data-dir={profile / 'profile'}"]
        command += ["--remote-debugging-pipe", "about:blank"]

        def wire() -> None:  # in the child, before exec: the pipe's ends become its fd 3 and fd 4
            ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, answers_w)]
            for target, end in zip((3, 4), ends, strict=True):
                os.dup2(end, target)  # inheritable, unlike every other descriptor of this process

        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                command, preexec_fn=wire, close_fds=False, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        os.close(commands_r)
        os.close(answers_w)
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._id = 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command (to a tab's `session`, else to the browser) and return its result."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while (reply := self._read()).get("id") != self._id:
            self._events.append(reply)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def page(self, url: str) -> tuple[str, str]:
        """A new tab showing `url`, loaded: its (target id, session id)."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        size = {"width": self.WIDTH, "height": self.HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", session, **size)
        self.call("Emulation.setScrollbarsHidden", session, hidden=True)
        self.call("Page.navigate", session, url=url)
        while not any(
            e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session for e in self._events
        ):
            self._events.append(self._read())
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return target, session

    def dom(self, url: str) -> str:
        """The page's DOM once loaded, serialised (what `--dump-dom` prints)."""
        target, session = self.page(url)
        expression = "document.documentElement.outerHTML"
        html = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        self.call("Target.closeTarget", targetId=target)
        return str(html["result"]["value"])

    def screenshot(self, url: str) -> bytes:
        """The page as a PNG of `WIDTH` x `HEIGHT` pixels (what `--screenshot` writes)."""
        target, session = self.page(url)
        data = self.call("Page.captureScreenshot", session, format="png")["data"]
        self.call("Target.closeTarget", targetId=target)
        return base64.b64decode(data)

    def close(self) -> int:
        """Ask the browser to exit; its exit status."""
        with contextlib.suppress(OSError, AssertionError):
            self.call("Browser.close")
        try:
            return self.proc.wait(timeout=self.TIMEOUT_S)
        finally:
            self.proc.kill()
            os.close(self._commands)
            os.close(self._answers)

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.TIMEOUT_S
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._answers], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._answers, 1 << 16) if ready else b""
            assert chunk, f"Chromium stopped answering: {self.log.read_text()[-2000:]}"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """The module's one headless Chromium (each start costs a second or more); it must exit cleanly."""
    browser = Chromium(_browser(), tmp_path_factory.mktemp("chromium"))
    try:
        yield browser
    finally:
        code = browser.close()
    assert code == 0, browser.log.read_text()[-2000:]


def test_chromium_draws_the_page(written: dict[str, Any], chromium: Chromium) -> None:
    from PIL import Image

    png = chromium.screenshot(written["out"].as_uri())
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1280, 1600)
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, table borders, the figures: not blank
    assert max(count for count, _ in colours) < 0.97 * 1280 * 1600


def test_a_header_click_sorts_the_rows_in_chromium(written: dict[str, Any], chromium: Chromium) -> None:
    url, page = written["out"].as_uri(), Page(written["source"])
    keys = [str(a["data-key"]) for a in page.attrs("th") if "data-key" in a]
    top1 = [float(r["cells"][keys.index("top1")].split()[0]) for r in page.rows]
    assert top1 == sorted(top1, reverse=True) and len(set(top1)) == 3  # as written: best first

    ascending = Page(chromium.dom(f"{url}#sort=top1"))
    assert ascending.order == list(reversed(page.order))  # a click on "val top-1 % best": lowest first
    sorted_by = [(a["data-key"], a["aria-sort"]) for a in ascending.attrs("th") if a.get("aria-sort")]
    assert sorted_by == [("top1", "ascending")]

    by_backbone = Page(chromium.dom(f"{url}#sort=backbone"))
    assert [r["cells"][0] for r in by_backbone.rows] == ["resnet50", "vgg19", "vgg19"]  # text as text

    filtered = Page(chromium.dom(f"{url}#backbone=resnet50"))
    assert [r["cells"][0] for r in filtered.rows if "hidden" not in r["attrs"]] == ["resnet50"]


def test_json_keeps_the_test_columns(written: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    report([written["root"]], "json", out=out)
    rows = json.loads(out.read_text())
    assert sorted(r["vs_best"] for r in rows) == ["best", "worse", "worse"]
