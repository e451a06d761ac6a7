"""Shared fixtures: every test gets its own data root and cache, never the user's."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests never go online. huggingface_hub reads HF_HUB_OFFLINE once, when first imported, so it
# must be set before anything imports timm; otherwise a missing weight file costs ~50 s of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
# One intra-op thread in this process and in every process it starts (runs, cells, ranks: they
# inherit it; `tlbench.speed` then keeps torch's count). Every model here is tiny, and on a 2-core
# machine that other processes share, OpenMP's two threads spin at each barrier waiting for the one
# that lost its core: a 3-epoch test_resnet run took 20-30 s with two threads under load, 1 s with
# one. Read by torch when first imported, so set before any test module imports it; the tests of
# the automatic thread count unset it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Module- and session-scoped fixtures run before the per-test directories below exist; whatever they
# cache (the convolution probes' verdicts) goes to a folder of this session's, never the user's.
_SESSION_CACHE = tempfile.mkdtemp(prefix="tlbench-tests-cache-")
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("tlbench-home")
    monkeypatch.setenv("TLBENCH_DATA", str(base / "data"))
    monkeypatch.setenv("TLBENCH_CACHE", str(base / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg"))  # the convolution probes' verdicts
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(base / "hf"))


@pytest.fixture(scope="session")
def synth_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small synthetic set per layout: 6 classes x 12 images at 24 px (read-only in tests)."""
    from tlbench.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    return {
        fmt: write_synthetic(root / fmt, fmt, classes=6, per_class=12, size=24, seed=0, progress=False)
        for fmt in ("imagefolder", "ravi-csv", "pickle", "parquet")
    }


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small real run, shared by every test that only reads a finished run directory (a test that
    changes one copies it first, with `shutil.copytree`): timm's test_resnet from scratch with the
    keras-vgg19 recipe on synthetic:4x120@32 (4 classes; 100 training and 20 validation images each)
    at 32 px, 8 epochs, seed 3, lr 0.02 (a recipe override), no augmentation, fp32 (tests compare its
    numbers exactly). About 4 s; it reaches ~0.8 validation top-1 (chance 0.25). The run directory
    is the only entry of its parent folder."""
    from tlbench.train.api import run_config, train

    cfg = run_config(
        "test_resnet",
        "keras-vgg19",
        freeze="none",
        data="synthetic:4x120@32",
        image_size=32,
        pretrained=False,
        device="cpu",
        epochs=8,
        seed=3,
        lr=0.02,
        augment="none",
        amp="off",  # `auto` may pick bf16 on a CPU that has it
        out=tmp_path_factory.mktemp("trained") / "run",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLBENCH_DATA", str(tmp_path_factory.mktemp("trained-data")))
        mp.setenv("TLBENCH_CACHE", str(tmp_path_factory.mktemp("trained-cache")))
        return train(cfg, progress=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `tlbench ARGS` in-process: `code, stdout, stderr = cli("data", "check", path)`."""
    from tlbench.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        from tlbench._console import console

        console.cache_clear()  # a fresh console per call, as a new process has: COLUMNS read now
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        code = exc.value.code
        return (code if isinstance(code, int) else 1), out, err

    return run


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs: writes past it fail with ENOSPC, as on a full disk (needs root; skipped,
    with the reason, where a tmpfs cannot be mounted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MiB tmpfs for a full-disk test needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
