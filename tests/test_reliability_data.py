"""Data faults made for real: a full cache disk, damaged cache entries, csv rows outside the folder,
bad labels and shards, 16-bit images, hidden folders. Each ends in one line and an exit code, or is
repaired with a note; none ends in a traceback, a hang or a SIGBUS."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tlbench.data import cache as cache_mod
from tlbench.data.cache import DamagedCacheWarning, entry_bytes, load_packed
from tlbench.data.check import check_data
from tlbench.data.classes import mini_imagenet_wnids
from tlbench.data.dataset import NonStandardClassesWarning, load_data
from tlbench.data.formats import read_source
from tlbench.errors import DataError

WNIDS = list(mini_imagenet_wnids())[:6]


def _load(path: Path, size: int = 24, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonStandardClassesWarning)
        return load_data(path, size, progress=False, **kw)


def _tlbench(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`tlbench ARGS` in its own process, with stdin an open pipe nobody writes to (a read would hang)."""
    return subprocess.run(
        [sys.executable, "-m", "tlbench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.PIPE,
    )


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = cache_mod.decode
    monkeypatch.setattr(cache_mod, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


# --- 10: a full cache disk -----------------------------------------------------------------------


_BUILD = """
import sys
from tlbench.data import cache
from tlbench.data.dataset import load_data
from tlbench.errors import run_entry_point
if sys.argv[2] == "past-the-check":
    cache._free_bytes = lambda folder: None  # as if the disk filled up after the check
sys.exit(run_entry_point(lambda: load_data(sys.argv[1], 128, progress=False)))
"""


def _build_in_child(data: Path, cache: Path, how: str) -> tuple[int, str]:
    """Build a cache entry of 72 images x 128 x 128 x 3 = 3.5 MB in its own process (a SIGBUS kills
    only the child): (exit status, the one `tlbench: error:` line)."""
    res = subprocess.run(
        [sys.executable, "-c", _BUILD, str(data), how],
        capture_output=True,
        text=True,
        env={**os.environ, "TLBENCH_CACHE": str(cache)},
        timeout=120,
    )
    assert res.returncode != -signal.SIGBUS, "killed by SIGBUS"
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("tlbench: error:")]
    assert len(lines) == 1, res.stderr
    return res.returncode, lines[0]


def test_full_cache_disk_is_refused_before_building(synth_sets: dict[str, Path], tiny_disk: Path) -> None:
    code, line = _build_in_child(synth_sets["imagefolder"], tiny_disk, "checked")
    assert code == 6
    assert str(tiny_disk) in line and f"it needs {entry_bytes(72, 128):,} bytes" in line
    assert "bytes free there" in line and "TLBENCH_CACHE" in line
    assert os.listdir(tiny_disk) == []  # no half-built entry


def test_disk_filling_during_a_build_is_exit_6_not_sigbus(
    synth_sets: dict[str, Path], tiny_disk: Path
) -> None:
    # Before the fix, the memory-mapped writes past the free space killed the process with SIGBUS.
    code, line = _build_in_child(synth_sets["imagefolder"], tiny_disk, "past-the-check")
    assert code == 6
    assert str(tiny_disk) in line and "No space left" in line
    assert f"it needs {entry_bytes(72, 128):,} bytes" in line
    assert os.listdir(tiny_disk) == []


# --- 13: a damaged cache entry -------------------------------------------------------------------


def _truncate_images(entry: Path) -> None:
    images = entry / "images.npy"
    os.truncate(images, images.stat().st_size // 2)


def _empty_images(entry: Path) -> None:
    (entry / "images.npy").write_bytes(b"")  # np.load: EOFError, once read by the CLI as Ctrl-C


def _garble_meta(entry: Path) -> None:
    (entry / "meta.json").write_text('{"classes": ["n0153')


def _wrong_count(entry: Path) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    meta["count"] += 1
    (entry / "meta.json").write_text(json.dumps(meta))


def _bad_labels(entry: Path) -> None:
    labels = np.load(entry / "labels.npy")
    labels[0] = 99
    np.save(entry / "labels.npy", labels)


@pytest.mark.parametrize("damage", [_truncate_images, _empty_images, _garble_meta, _wrong_count, _bad_labels])
def test_damaged_cache_entry_is_rebuilt_with_a_note(
    synth_sets: dict[str, Path], tmp_path: Path, decode_calls: list[int], damage
) -> None:
    folder = shutil.copytree(synth_sets["pickle"], tmp_path / "p")
    first = _load(folder)
    images, labels = np.array(first.train.packed.images), first.train.packed.labels.copy()
    entry = Path(first.info["cache"])
    damage(entry)
    with pytest.warns(DamagedCacheWarning, match=f"{entry.name} is damaged .*: rebuilding it"):
        again = _load(folder)
    assert len(decode_calls) == 2 * 72
    assert again.info["cache"] == str(entry)
    assert np.array_equal(np.asarray(again.train.packed.images), images)
    assert np.array_equal(again.train.packed.labels, labels)
    assert np.array_equal(again.val.indices, first.val.indices)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedCacheWarning)
        _load(folder)  # repaired: no note, no decoding
    assert len(decode_calls) == 2 * 72
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]


def test_load_packed_names_what_is_damaged(synth_sets: dict[str, Path]) -> None:
    entry = Path(_load(synth_sets["imagefolder"]).info["cache"])
    _truncate_images(entry)
    with pytest.raises(cache_mod.DamagedEntry, match=r"images\.npy holds .* bytes, the metadata says"):
        load_packed(entry)


# --- 17: csv rows outside the data folder, or naming a device or a pipe ---------------------------


def test_csv_rows_outside_the_folder_or_not_regular_files_are_refused(
    synth_sets: dict[str, Path], tmp_path: Path
) -> None:
    data = shutil.copytree(synth_sets["ravi-csv"], tmp_path / "d")
    good = sorted((data / "images").iterdir())[0]
    (tmp_path / "outside").mkdir()
    shutil.copy(good, tmp_path / "outside" / "x.jpg")  # a real image: it used to be trained on
    os.mkfifo(data / "images" / "pipe.jpg")  # opening it for reading blocks forever
    (data / "images" / "link.jpg").symlink_to("/dev/stdin")
    rows = {
        "../" * 40 + "dev/stdin": "outside the data folder",
        "../../outside/x.jpg": "outside the data folder",
        "pipe.jpg": "not a regular file",
        "link.jpg": "not a regular file",
    }
    with (data / "train.csv").open("a") as fh:
        fh.writelines(f"{name},{WNIDS[0]}\n" for name in rows)
    res = _tlbench("data", "check", data, "--json", timeout=60)  # used to hang on /dev/stdin
    assert res.returncode == 4, res.stderr
    corrupt = {c["ref"]: c["error"] for c in json.loads(res.stdout)["corrupt"]}
    assert {ref.removeprefix("images/") for ref in corrupt} == set(rows)
    for name, why in rows.items():
        assert why in corrupt[f"images/{name}"]
    with pytest.raises(DataError, match=r"4 corrupt or unreadable image\(s\).*--skip-corrupt"):
        _load(data)
    bundle = _load(data, skip_corrupt=True)
    assert bundle.info["corrupt_skipped"] == 4
    assert len(bundle.train) + len(bundle.val) == 72  # the outside image is not among them


# --- 18: bad labels, shards and class dicts -------------------------------------------------------


def _relabel(shard: Path, labels: list) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(shard)
    meta = table.schema.metadata
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    pq.write_table(table.replace_schema_metadata(meta), shard)


@pytest.fixture
def parquet_copy(synth_sets: dict[str, Path], tmp_path: Path) -> Path:
    return shutil.copytree(synth_sets["parquet"], tmp_path / "pq")


def _train_shard(root: Path) -> tuple[Path, list[int]]:
    import pyarrow.parquet as pq

    shard = next((root / "data").glob("train-*.parquet"))
    return shard, pq.read_table(shard, columns=["label"]).column("label").to_pylist()


@pytest.mark.parametrize(
    ("make", "shown"),
    [
        (lambda labels: [str(v) for v in labels], "'0'"),  # digits as strings: not class names
        (lambda labels: [v + 0.7 for v in labels], "0.7"),  # used to be truncated to 0
        (lambda labels: [True] * len(labels), "True"),
    ],
)
def test_parquet_labels_must_be_indices_or_class_names(parquet_copy: Path, make, shown: str) -> None:
    shard, labels = _train_shard(parquet_copy)
    _relabel(shard, make(labels))
    with pytest.raises(DataError) as exc:
        read_source(parquet_copy)
    msg = exc.value.one_line()
    assert shard.name in msg and "row 0" in msg and shown in msg and "class name" in msg


def test_parquet_class_name_and_whole_float_labels_are_read(parquet_copy: Path) -> None:
    before = read_source(parquet_copy).items
    shard, labels = _train_shard(parquet_copy)
    _relabel(shard, [WNIDS[v] for v in labels])
    assert read_source(parquet_copy).items == before
    _relabel(shard, [float(v) for v in labels])
    assert read_source(parquet_copy).items == before


@pytest.mark.parametrize("split", ["train", "validation"])
def test_truncated_parquet_shard_is_exit_4(cli, parquet_copy: Path, split: str) -> None:
    shard = next((parquet_copy / "data").glob(f"{split}-*.parquet"))
    os.truncate(shard, shard.stat().st_size // 2)
    code, _, err = cli("data", "check", parquet_copy)
    assert code == 4 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot read parquet shard {shard.name}" in err


def _with_class_dict(root: Path, class_dict: object) -> Path:
    path = root / "mini-imagenet-cache-train.pkl"
    with path.open("rb") as fh:
        obj = pickle.load(fh)
    obj["class_dict"] = class_dict
    path.write_bytes(pickle.dumps(obj))
    return path


@pytest.mark.parametrize(
    ("class_dict", "problem"),
    [
        ([["n01532829", [0]]], "class_dict is a list, not a dict"),
        ({"n01532829": 5}, "class n01532829 has int"),
        ({"n01532829": "0,1"}, "class n01532829 has str"),
        ({"n01532829": ["a"]}, "index 'a' is not an image index"),
        ({"n01532829": [0.7]}, "index 0.7 is not an image index"),
        ({"n01532829": [10**6]}, "index 1000000 is not an image index"),
        ({"n01532829": [0], 7: [1]}, "class_dict key 7 is not a class name"),
    ],
)
def test_malformed_pickle_class_dict_is_exit_4(
    cli, synth_sets: dict[str, Path], tmp_path: Path, class_dict: object, problem: str
) -> None:
    root = shutil.copytree(synth_sets["pickle"], tmp_path / "p")
    path = _with_class_dict(root, class_dict)
    with pytest.raises(DataError, match=problem) as exc:
        read_source(root).items  # noqa: B018 - listing the items unpickles
    assert path.name in exc.value.one_line()
    code, _, err = cli("data", "check", root)
    assert code == 4 and err.count("\n") == 1 and path.name in err and "Traceback" not in err


def test_garbage_pickle_is_exit_4(cli, synth_sets: dict[str, Path], tmp_path: Path) -> None:
    root = shutil.copytree(synth_sets["pickle"], tmp_path / "p")
    path = root / "mini-imagenet-cache-train.pkl"
    path.write_bytes(path.read_bytes()[:1000])
    code, _, err = cli("data", "check", root)
    assert code == 4 and f"cannot read pickle cache {path.name}" in err and err.count("\n") == 1


# --- 19: 16-bit images ---------------------------------------------------------------------------


def _gradient_16() -> np.ndarray:
    return (np.arange(24 * 24, dtype=np.uint32).reshape(24, 24) * 113).astype(np.uint16)  # 0 .. 64,975


def test_16_bit_png_decodes_scaled_to_8_bits(synth_sets: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    data = shutil.copytree(synth_sets["imagefolder"], tmp_path / "d")
    victim = sorted((data / "train" / WNIDS[0]).iterdir())[0]
    victim.unlink()
    png = victim.with_suffix(".png")
    Image.fromarray(_gradient_16()).save(png)
    assert Image.open(png).mode == "I;16"
    expected = ((_gradient_16().astype(np.int64) + 128) // 257).astype(np.uint8)  # round(v / 257)
    bundle = _load(data)
    row = int(bundle.train.indices[0])  # the first image of the first class
    pixels = np.asarray(bundle.train.packed.images[row])
    assert np.array_equal(pixels, np.repeat(expected[..., None], 3, axis=2))
    assert (pixels == 255).mean() < 0.01  # PIL's own conversion made 99.5 % of it white
    report = check_data(data, progress=False)
    assert report["usable"] and any("1 image(s) with 16-bit" in n for n in report["notes"])


def test_high_bit_depth_modes() -> None:
    from PIL import Image

    from tlbench.data.cache import to_8_bit

    eight = np.arange(256, dtype=np.int32).reshape(16, 16)
    wide = Image.fromarray(eight * 257, "I")  # a 16-bit copy of an 8-bit image, in PIL's 32-bit mode
    assert np.array_equal(np.asarray(to_8_bit(wide)), eight.astype(np.uint8))
    rgb = Image.new("RGB", (2, 2))
    assert to_8_bit(rgb) is rgb
    with pytest.raises(ValueError, match="float"):
        to_8_bit(Image.new("F", (2, 2)))


# --- 20: hidden folders and files ----------------------------------------------------------------


def test_hidden_folders_and_files_are_not_classes_or_images(
    synth_sets: dict[str, Path], tmp_path: Path
) -> None:
    data = shutil.copytree(synth_sets["imagefolder"], tmp_path / "d")
    before = read_source(data).items
    for split in ("train", "val"):
        some = sorted((data / split / WNIDS[0]).iterdir())[0]
        shutil.copytree(data / split / WNIDS[0], data / split / ".ipynb_checkpoints")
        (some.parent / f"._{some.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS metadata
        shutil.copy(some, some.parent / f".{some.name}")
    source = read_source(data)
    assert source.items == before and source.classes == WNIDS
    report = check_data(data, progress=False)
    assert report["usable"] and report["num_classes"] == 6 and report["corrupt"] == []
    only_hidden = tmp_path / "h"
    (only_hidden / "train" / ".ipynb_checkpoints").mkdir(parents=True)
    with pytest.raises(DataError, match="not a mini-ImageNet layout"):
        read_source(only_hidden)
