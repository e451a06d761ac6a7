"""`benchmarks/gpu.sh` stays runnable between the sessions that are lent a GPU: its CPU smoke mode
(`SMOKE=1`: the same steps at tiny sizes) runs every step and writes its summary."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_smoke_mode_runs_every_step(tmp_path: Path) -> None:
    env = os.environ | {"SMOKE": "1", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
                        "WORK": str(tmp_path / "work")}  # fmt: skip
    # The script's setup runs `pip install -e .` into PYTHON's environment: here that would point
    # the developer's own environment at this checkout (it runs from PYTHONPATH anyway). pip reads
    # PIP_DRY_RUN as --dry-run: it still resolves the install, and installs nothing.
    env |= {"PIP_DRY_RUN": "1"}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    with (out / "steps.tsv").open() as fh:
        steps = {row["step"]: row["status"] for row in csv.DictReader(fh, delimiter="\t")}
    assert steps and all(status == "ok" for status in steps.values()), steps
    assert any(name.startswith("bench eager-vgg11") for name in steps)
    assert any(name.startswith("run vgg11") for name in steps)
    summary = (out / "summary.md").read_text()
    assert "## Targets" in summary and "end to end" in summary
    assert (out / "bench_all.csv").is_file() and (out / "record.tar.gz").is_file()  # bench/ and run/, packed
