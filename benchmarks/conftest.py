"""Benchmark plumbing: each benchmark reports images/s; `--record` writes a summary under results/.

./dev bench                       # pytest-benchmark tables, JSON autosaved under .benchmarks/
./dev bench -- --record           # also writes results/bench_data_<device>.{json,md}
./dev bench -- --device cuda      # the same on the GPU
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

RESULTS: dict[str, dict[str, dict]] = {}
TIMINGS: dict[str, dict[str, dict]] = {}
"""Measurements in seconds rather than images/s (`record_seconds`), summarised in their own table."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record", action="store_true", help="write results/bench_data_<device>.{json,md}")
    parser.addoption("--device", default="cpu", help="cpu or cuda: where the batched paths run")
    parser.addoption("--bench-size", type=int, default=224, help="image side in pixels")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    dev = request.config.getoption("--device")
    if dev.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("--device cuda but CUDA is not available")
    return dev


@pytest.fixture(scope="session")
def bench_size(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--bench-size"))


def record(group: str, name: str, images_per_sec: float, **info: object) -> None:
    """Keep a measurement for the summary (one group compares a candidate with its baseline)."""
    RESULTS.setdefault(group, {})[name] = {"images_per_sec": images_per_sec, **info}


def record_seconds(group: str, name: str, seconds: dict[str, float], notes: str = "", **info: object) -> None:
    """Keep a measurement in seconds, e.g. `{"start -> first batch": 0.9, "last batch -> exit": 1.1}`
    (one group's rows share the keys, which become the summary table's columns)."""
    TIMINGS.setdefault(group, {})[name] = {"seconds": seconds, "notes": notes, **info}


def _timing_lines() -> list[str]:
    """The summary table of `record_seconds`, one per group."""
    lines: list[str] = []
    for group, rows in TIMINGS.items():
        keys = list(next(iter(rows.values()))["seconds"])
        lines += ["", f"| {group} | " + " | ".join(f"{k} (s)" for k in keys) + " | notes |"]
        lines.append("| --- | " + " | ".join("---:" for _ in keys) + " | --- |")
        for name, row in rows.items():
            values = " | ".join(f"{row['seconds'][k]:.2f}" for k in keys)
            lines.append(f"| {name} | {values} | {row['notes']} |")
    return lines


def environment(device: str) -> dict[str, object]:
    """tlbench's env.json fields (versions, CPU, GPU, commit), plus the date, numpy and Pillow."""
    import numpy
    import PIL

    from tlbench.train.env import environment as run_environment

    env = {k: v for k, v in run_environment(device).items() if v is not None}
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **env,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not RESULTS and not TIMINGS:
        return
    device = session.config.getoption("--device")
    env = environment(device)
    lines = [f"# tlbench benchmarks ({device}): pytest-benchmark, median of rounds"]
    if RESULTS:
        lines += ["", "| group | path | images/s | speed-up | notes |", "| --- | --- | ---: | ---: | --- |"]
    for group, rows in RESULTS.items():
        base = next((r["images_per_sec"] for r in rows.values() if r.get("baseline")), None)
        for name, row in rows.items():
            ratio = row["images_per_sec"] / base if base else float("nan")
            row["speedup_vs_baseline"] = round(ratio, 2)
            lines.append(
                f"| {group} | {name} | {row['images_per_sec']:,.0f} | {ratio:.1f}x | {row.get('notes', '')} |"
            )
    lines += _timing_lines()
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items())]
    text = "\n".join(lines)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)
    if session.config.getoption("--record"):
        out = Path(session.config.rootpath) / "results"
        out.mkdir(exist_ok=True)
        tag = "cpu" if device == "cpu" else "gpu"
        (out / f"bench_data_{tag}.json").write_text(
            json.dumps({"env": env, "results": RESULTS, "timings": TIMINGS}, indent=2) + "\n"
        )
        (out / f"bench_data_{tag}.md").write_text(text + "\n")
