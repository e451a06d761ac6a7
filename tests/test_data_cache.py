"""Decode once; reuse; rebuild when the source changes; corrupt images are found and named."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tlbench.data import cache as cache_mod
from tlbench.data.dataset import load_data
from tlbench.errors import DataError


@pytest.fixture
def folder(synth_sets: dict[str, Path], tmp_path: Path) -> Path:
    return shutil.copytree(synth_sets["imagefolder"], tmp_path / "data")


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = cache_mod.decode

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "decode", counting)
    return calls


def test_second_load_reuses_the_cache(folder: Path, decode_calls: list[int]) -> None:
    a = load_data(folder, 24, progress=False)
    first = len(decode_calls)
    assert first == 72
    b = load_data(folder, 24, progress=False)
    assert len(decode_calls) == first
    assert a.info["cache"] == b.info["cache"]
    assert isinstance(b.train.packed.images, np.memmap)


def test_changed_source_rebuilds(folder: Path, decode_calls: list[int]) -> None:
    a = load_data(folder, 24, progress=False)
    victim = next((folder / "train").rglob("*.JPEG"))
    os.utime(victim, ns=(1, 1))
    b = load_data(folder, 24, progress=False)
    assert len(decode_calls) == 144
    assert a.info["cache"] != b.info["cache"]


def test_size_and_interpolation_are_separate_entries(folder: Path) -> None:
    near = load_data(folder, 16, "nearest", progress=False)
    bil = load_data(folder, 16, "bilinear", progress=False)
    assert near.info["cache"] != bil.info["cache"]
    assert near.train.packed.images.shape[1:] == (16, 16, 3)
    assert near.info["interpolation"] == "nearest"
    assert not np.array_equal(near.train.images, bil.train.images)


def test_nearest_resize_matches_pil_nearest(folder: Path) -> None:
    from PIL import Image

    bundle = load_data(folder, 40, "nearest", progress=False)
    first = sorted((folder / "train").rglob("*.JPEG"))[0]
    expected = np.asarray(Image.open(first).convert("RGB").resize((40, 40), Image.Resampling.NEAREST))
    row = int(bundle.train.indices[0])
    assert np.array_equal(bundle.train.packed.images[row], expected)


def test_unknown_interpolation(folder: Path) -> None:
    with pytest.raises(DataError, match="unknown interpolation 'cubic'"):
        load_data(folder, 24, "cubic", progress=False)


def _corrupt(folder: Path) -> list[Path]:
    files = sorted((folder / "train").rglob("*.JPEG"))
    files[0].write_bytes(b"not a jpeg at all")
    files[5].write_bytes(files[5].read_bytes()[:40])  # truncated
    return [files[0], files[5]]


def test_corrupt_images_stop_loading_and_are_named(folder: Path) -> None:
    bad = _corrupt(folder)
    with pytest.raises(DataError) as exc:
        load_data(folder, 24, progress=False)
    msg = exc.value.one_line()
    assert "2 corrupt" in msg and bad[0].name in msg and bad[1].name in msg and "--skip-corrupt" in msg
    # the failure is remembered: the same answer without decoding again
    with pytest.raises(DataError, match="2 corrupt"):
        load_data(folder, 24, progress=False)


def test_skip_corrupt_skips_and_counts(folder: Path) -> None:
    _corrupt(folder)
    bundle = load_data(folder, 24, skip_corrupt=True, progress=False)
    assert bundle.info["corrupt_skipped"] == 2
    assert len(bundle.train) + len(bundle.val) == 70
    assert bundle.train.packed.images.shape[0] == 70


def test_no_half_built_cache_after_a_crash(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "decode", boom)
    with pytest.raises(KeyboardInterrupt):
        load_data(folder, 24, progress=False)
    root = cache_mod.default_cache_root()
    assert not root.exists() or not any(root.iterdir())


def test_a_cache_hit_never_unpickles_the_source(
    synth_sets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlbench.data.formats import pickles

    folder = shutil.copytree(synth_sets["pickle"], tmp_path / "p")
    first = load_data(folder, 24, progress=False)
    calls: list[Path] = []
    real = pickles._load_pickle
    monkeypatch.setattr(pickles, "_load_pickle", lambda path: calls.append(path) or real(path))
    again = load_data(folder, 24, progress=False)
    assert calls == []  # the split comes from the cache's labels, the key from file stats
    assert np.array_equal(first.val.indices, again.val.indices)


def test_half_built_entries_of_dead_processes_are_removed(folder: Path) -> None:
    root = cache_mod.default_cache_root()
    stale = root / ".tmp-0123456789abcdef0123-999999999"  # no such process
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half")
    load_data(folder, 24, progress=False)
    assert not stale.exists()


def test_sigterm_during_a_build_cleans_up(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    real = cache_mod.decode

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # what `sweep` or a job scheduler sends
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "decode", terminated)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        load_data(folder, 24, progress=False)
    root = cache_mod.default_cache_root()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
